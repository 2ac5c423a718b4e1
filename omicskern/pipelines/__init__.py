"""Pipelines: whole jobs over files (tokenize a genome, tokenize cells, embed a genome, embed cells,
score variants, perturb cells in silico).

A pipeline owns the job mechanics: work units split by rank (:mod:`~omicskern.pipelines.units`),
job keys on the input's content, manifests, atomic shard writes and resume
(:mod:`~omicskern.pipelines.jobs`). The CLI only parses arguments and calls a pipeline.

Layering: tokenizers -> ops -> modules -> models -> pipelines -> cli; ``omicskern.io`` beside.
"""

from __future__ import annotations

from omicskern._lazy import lazy_names

_LAZY = {
    "tokenize_fasta": "omicskern.pipelines.tokenize",
    "tokenize_cells": "omicskern.pipelines.tokenize",
    "embed_genome": "omicskern.pipelines.genome",
    "EmbedGenomeResult": "omicskern.pipelines.genome",
    "score_variants": "omicskern.pipelines.variants",
    "perturb_cells": "omicskern.pipelines.perturb",
    "PerturbResult": "omicskern.pipelines.perturb",
    "TokenizeResult": "omicskern.pipelines.tokenize",
    "embed_cells": "omicskern.pipelines.cells",
    "EmbedCellsResult": "omicskern.pipelines.cells",
    "JobKey": "omicskern.pipelines.jobs",
    "JobMismatchError": "omicskern.errors",
    "Manifest": "omicskern.pipelines.jobs",
    "ShardedJob": "omicskern.pipelines.jobs",
    "atomic_write": "omicskern.pipelines.jobs",
    "WorkUnit": "omicskern.pipelines.units",
    "split_by_rank": "omicskern.pipelines.units",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
