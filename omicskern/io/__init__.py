"""Reading and writing: FASTA (:mod:`omicskern.io.fasta`), cell matrices (:mod:`omicskern.io.cells`),
gene dictionaries (:mod:`omicskern.io.gene_dict`), batch writers (:mod:`omicskern.io.writers`), the
genome embedding store (:mod:`omicskern.io.genome_store`).
Beside the layers (tokenizers, models and pipelines all use it; it imports none of them); names
load lazily, so ``import omicskern.io`` imports nothing heavy."""

from __future__ import annotations

from omicskern._lazy import lazy_names

_LAZY = {
    "FastaFile": "omicskern.io.fasta",
    "CellMatrix": "omicskern.io.cells",
    "Chunk": "omicskern.io.cells",
    "open_cells": "omicskern.io.cells",
    "load_gene_dict": "omicskern.io.gene_dict",
    "load_token_dictionary": "omicskern.io.gene_dict",
    "load_gene_medians": "omicskern.io.gene_dict",
    "load_scgpt_vocab": "omicskern.io.gene_dict",
    "load_symbol_table": "omicskern.io.gene_dict",
    "save_gene_dict": "omicskern.io.gene_dict",
    "build_gene_dictionary": "omicskern.io.gene_dict",
    "infer_format": "omicskern.io.writers",
    "save_batch": "omicskern.io.writers",
    "load_npz": "omicskern.io.writers",
    "to_arrow": "omicskern.io.writers",
    "GenomeEmbeddings": "omicskern.io.genome_store",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
