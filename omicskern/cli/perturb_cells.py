"""``omicskern perturb-cells IN.h5ad --model DIR --genes G1,G2 | --all-expressed [--mode delete|overexpress]
[--cells FILTER] --out TABLE``: Geneformer's in-silico deletion / overexpression, batched.

Parses the command line and calls :func:`omicskern.pipelines.perturb.perturb_cells`, which writes
the table (``.tsv`` or ``.parquet``) atomically; the summary (rows, scored, statuses, genes not in
the dictionary, perturbations/s) goes to stderr.

``--cells``: ``COLUMN=VALUE[,VALUE...]`` (an obs column, values compared as text), ``@FILE`` (obs
names, one a line), or comma-separated obs names.
"""

from __future__ import annotations

import argparse
import sys

from omicskern.cli._common import UsageError, existing_path

FLAGS = {"genes": "--genes", "all_expressed": "--all-expressed", "mode": "--mode", "cells": "--cells",
         "out": "--out", "emb_layer": "--emb-layer", "pooling": "--pooling", "batch_tokens": "--batch-tokens",
         "chunk_tokens": "--chunk-tokens", "device": "--device", "dtype": "--dtype", "gene_column": "--gene-column",
         "symbol_column": "--symbol-column", "gene_shifts_out": "--gene-shifts", "gene_shifts": "--gene-shifts",
         "layer_name": "--layer"}
FLAG_VALUES = {"gene_column=None": "--gene-column index", "all_expressed=True": "--all-expressed",
               "gene_shifts=True": "--gene-shifts PATH", "give either genes=[...] or all_expressed=True (exactly one)":
               "give either --genes G1,G2 or --all-expressed (exactly one)"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "perturb-cells", help="in-silico deletion / overexpression of genes in cells (Geneformer), batched",
        description="Delete a gene's token from each cell's rank-value encoding, or move it to the front (after "
                    "<cls>), and score the shift of the cell embedding (cosine similarity, Geneformer's "
                    "InSilicoPerturber definitions). Every perturbation is a ragged row; rows of all cells are "
                    "batched without padding and each original cell is embedded once. Output: one row per "
                    "(cell, gene) as .tsv or .parquet. Summaries go to stderr.")
    p.add_argument("input", help="input .h5ad (cells x genes raw counts)")
    p.add_argument("--model", required=True, help="Geneformer checkpoint folder (with its token / median dictionaries)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--genes", default=None,
                   help="comma-separated gene ids of the token dictionary (or symbols of the input); each is "
                        "perturbed on its own")
    g.add_argument("--all-expressed", action="store_true", default=None,
                   help="perturb every gene of every selected cell (about n^2 tokens per cell of n genes)")
    p.add_argument("--mode", choices=("delete", "overexpress"), default="delete", help="default: delete")
    p.add_argument("--cells", default=None, metavar="FILTER",
                   help="COLUMN=VALUE[,VALUE...], @FILE of obs names, or comma-separated obs names (default: all)")
    p.add_argument("--out", required=True, help="output table: .tsv or .parquet")
    p.add_argument("--gene-shifts", dest="gene_shifts_out", default=None, metavar="PATH",
                   help="also write the cosine of every other gene's embedding (.tsv or .parquet), and add "
                        "mean_gene_cosine to --out")
    p.add_argument("--emb-layer", type=int, default=-1,
                   help="Geneformer's emb_layer: 0 = last layer, -1 = second to last (default -1)")
    p.add_argument("--pooling", choices=("cls", "mean"), default=None,
                   help="cell embedding: <cls> (default with a V2 dictionary) or mean over gene tokens (V1)")
    p.add_argument("--gene-column", default=None, help="var column of gene ids (default ensembl_id; 'index' = var_names)")
    p.add_argument("--symbol-column", default=None,
                   help="var column of gene symbols (default: gene_symbol, symbol, gene_name or feature_name)")
    p.add_argument("--layer", default=None, help="read adata.layers[LAYER] instead of X")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per model call (default 16384)")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="perturbed tokens built per chunk (bounds memory; default 64 x --batch-tokens)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model compute dtype (default: the checkpoint's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: this process's cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch_tokens", "chunk_tokens"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"{FLAGS[name]} must be >= 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.emb_layer > 0:
        raise UsageError(f"--emb-layer must be <= 0 (0 = last layer, -1 = second to last), got {args.emb_layer}")
    if args.genes is not None and not [x for x in args.genes.split(",") if x.strip()]:
        raise UsageError("--genes: no gene given")
    for path, flag in ((args.out, "--out"), (args.gene_shifts_out, "--gene-shifts")):
        if path is not None and not path.lower().endswith((".tsv", ".txt", ".parquet", ".pq")):
            raise UsageError(f"{flag} {path}: name a .tsv or .parquet file (the format follows the suffix)")
    existing_path(args.input, "input")
    existing_path(args.model, "--model")
    if args.cells is not None and args.cells.startswith("@"):
        existing_path(args.cells[1:], "--cells @FILE")


def run(args: argparse.Namespace) -> int:
    from omicskern.io.cells import check_h5ad
    from omicskern.pipelines.engine import configure_threads
    from omicskern.pipelines.perturb import perturb_cells

    check_args(args)
    check_h5ad(args.input)
    configure_threads(args.threads)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    gene_column = args.gene_column or "ensembl_id"
    res = perturb_cells(
        args.input, args.model, genes=args.genes, all_expressed=bool(args.all_expressed), mode=args.mode,
        cells=args.cells, out=args.out, gene_shifts=args.gene_shifts_out is not None,
        gene_shifts_out=args.gene_shifts_out, emb_layer=args.emb_layer, pooling=args.pooling,
        batch_tokens=args.batch_tokens, chunk_tokens=args.chunk_tokens, device=device, dtype=args.dtype,
        gene_column=None if gene_column == "index" else gene_column, symbol_column=args.symbol_column,
        layer_name=args.layer, progress=not args.no_progress)
    for line in res.summary().splitlines():
        print(line, file=sys.stderr)
    print(f"  wrote {len(res.table):,} rows to {res.out}", file=sys.stderr)
    if res.gene_shifts_out is not None:
        print(f"  wrote {len(res.gene_shifts):,} gene shifts to {res.gene_shifts_out}", file=sys.stderr)
    return 0
