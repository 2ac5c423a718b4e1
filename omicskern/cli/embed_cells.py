"""``omicskern embed-cells IN.h5ad --model DIR --out OUT.zarr|OUT.npy``: one embedding per cell
(Geneformer V1/V2, scGPT), streamed from the backed h5ad, resumable, split over ranks under
``torchrun --nproc_per_node N -m omicskern embed-cells ...``.

Parses the command line and calls :func:`omicskern.pipelines.cells.embed_cells` (what a
cell's vector is, the output layout, resume and ``--write-obsm`` are documented there). Summary
(cells embedded / not embedded by reason, genes matched, wall time split reading+tokenizing vs
model) and progress (cells/s, ETA) go to stderr.
"""

from __future__ import annotations

import argparse
import sys

from omicskern.cli._common import UsageError, existing_path

FLAGS = {"gene_column": "--gene-column", "filter_column": "--filter-column", "layer": "--layer",
         "overwrite": "--overwrite", "pooling": "--pooling", "emb_layer": "--emb-layer", "emb": "--emb",
         "batch_tokens": "--batch-tokens", "cells_per_unit": "--chunk-cells", "obsm_key": "--key",
         "write_obsm": "--write-obsm", "out": "--out", "model": "--model", "dtype": "--dtype", "device": "--device",
         "tie_break": "--tie-break", "seed": "--seed", "fmt": "--out"}
FLAG_VALUES = {"gene_column=None": "--gene-column index", "overwrite=True": "--overwrite",
               "write_obsm=True": "--write-obsm", "fmt='zarr'/'npy'": "--out X.zarr / X.npy"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed-cells", help="embed every cell of an .h5ad with Geneformer or scGPT (zarr / npy output)",
        description="Embed every cell of an .h5ad (read backed, in chunks) with a Geneformer (V1/V2) or scGPT "
                    "checkpoint folder: one row per input cell in input order (NaN + a status for a cell that "
                    "can't be embedded), written to a .zarr store or a .npy file (+ .obs.csv). Resumable: rerun "
                    "the same command after a kill. Under torchrun, ranks share the cells.")
    p.add_argument("input", help="input .h5ad (cells x genes raw counts)")
    p.add_argument("--model", required=True, help="checkpoint folder (Geneformer: config.json + weights + "
                                                  "dictionaries; scGPT: args.json + vocab.json + best_model.pt)")
    p.add_argument("--out", required=True, help="output: X.zarr (Zarr v3 store) or X.npy")
    p.add_argument("--key", default=None, help="obsm key for --write-obsm (default X_scgpt / X_geneformer)")
    p.add_argument("--write-obsm", action="store_true", help="also write the embeddings into the input's /obsm/KEY "
                                                             "(a copy renamed over the input: atomic)")
    p.add_argument("--overwrite", action="store_true", help="replace an output of a different job (and an existing "
                                                            "obsm KEY)")
    p.add_argument("--layer", default=None, help="read adata.layers[LAYER] instead of X")
    p.add_argument("--gene-column", default=None, help="var column with the gene keys (default: ensembl_id for "
                                                       "Geneformer, var_names for scGPT; 'index' = var_names)")
    p.add_argument("--filter-column", default=None, help="obs column; cells where it is not 1 get NaN "
                                                         "(Geneformer default: filter_pass when present)")
    p.add_argument("--pooling", default=None, help="cell vector: default Geneformer V2 cls / V1 mean, scGPT "
                                                   "cls_normalized (as embed_data); or mean, cls, max, last")
    p.add_argument("--emb-layer", type=int, default=None, help="hidden-state index (default: Geneformer -2 = "
                                                               "EmbExtractor's emb_layer=-1, scGPT -1)")
    p.add_argument("--emb", choices=("cell", "gene"), default="cell",
                   help="gene: also per-gene embeddings averaged over cells (.zarr only)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per model call")
    p.add_argument("--chunk-cells", type=int, default=4096, help="cells per work unit / output chunk (bounds memory)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None, help="default: the checkpoint's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    p.add_argument("--tie-break", choices=("deterministic", "random"), default=None,
                   help="scGPT binning ties (default deterministic; random: seeded per unit)")
    p.add_argument("--seed", type=int, default=None, help="scGPT: seed of the random tie-break / gene sampling")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def check_args(args: argparse.Namespace) -> None:
    if args.batch_tokens < 1:
        raise UsageError(f"--batch-tokens must be >= 1, got {args.batch_tokens}")
    if args.chunk_cells < 1:
        raise UsageError(f"--chunk-cells must be >= 1, got {args.chunk_cells}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    out = args.out.rstrip("/")
    if not out.endswith((".zarr", ".npy")):
        raise UsageError(f"--out {args.out}: name a .zarr store or a .npy file")
    if args.emb == "gene" and not out.endswith(".zarr"):
        raise UsageError("--emb gene needs a .zarr --out (gene embeddings are stored with their gene ids)")
    existing_path(args.input, "input")
    existing_path(args.model, "--model")


def run(args: argparse.Namespace) -> int:
    from omicskern.pipelines.cells import embed_cells
    from omicskern.pipelines.distributed import Ranks

    check_args(args)
    tok_opts = {k: v for k, v in (("tie_break", args.tie_break), ("seed", args.seed)) if v is not None}
    import omicskern

    ranks = Ranks.from_env()
    model = omicskern.load(args.model, device=ranks.device(args.device), dtype=args.dtype)
    if tok_opts and model.model_type != "scgpt":
        raise UsageError("--tie-break / --seed apply to scGPT only")
    gene_column = args.gene_column if args.gene_column is None else (None if args.gene_column == "index"
                                                                      else args.gene_column)
    res = embed_cells(args.input, model, args.out.rstrip("/"), layer=args.layer,
                      gene_column="__default__" if args.gene_column is None else gene_column,
                      filter_column="__default__" if args.filter_column is None else args.filter_column,
                      pooling=args.pooling, emb_layer=args.emb_layer, emb=args.emb, batch_tokens=args.batch_tokens,
                      cells_per_unit=args.chunk_cells, tokenizer_options=tok_opts, overwrite=args.overwrite,
                      write_obsm=args.write_obsm, obsm_key=args.key, progress=not args.no_progress and ranks.is_main,
                      threads=args.threads)
    if ranks.is_main:
        print(res.summary(), file=sys.stderr)
    return 0
