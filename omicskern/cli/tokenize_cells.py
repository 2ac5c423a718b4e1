"""``omicskern tokenize-cells IN.h5ad --method rank|bin ... --out OUT``: Geneformer rank-value or
scGPT binned-value tokens of every cell, streamed from the (backed) h5ad in chunks.

Parses the command line and calls :func:`omicskern.pipelines.tokenize.tokenize_cells`, which
writes the output atomically and records its job in it: rerunning the same job is a no-op, an
output of another job is refused unless ``--overwrite``.

Checked before any work: ``--format`` agrees with the suffix of ``--out`` (``--out x.out --format
npz`` is refused, exit 2: the output is written exactly at ``--out`` and recognised by its
suffix), ``--threads`` >= 0, the input is an HDF5 file (not a folder, not empty, not garbage) and
the ``--out`` location is writable (exit 1). The summary names the path written.
"""

from __future__ import annotations

import argparse
import sys

from omicskern.cli._common import UsageError, existing_path, refuse_unless

RANK_ONLY = ["token_dict", "gene_medians", "preset", "model_input_size", "symbol_table", "total_counts_column"]
BIN_ONLY = ["vocab", "n_bins", "max_len", "truncate", "tie_break", "seed", "gene_subset"]

FLAGS = {"gene_column": "--gene-column", "gene_subset": "--gene-subset", "symbol_table": "--symbol-table",
         "integer_check": "--integer-check", "filter_column": "--filter-column", "obs_columns": "--obs-columns",
         "total_counts_column": "--total-counts-column", "max_len": "--max-len", "max_length": "--max-len",
         "model_input_size": "--model-input-size", "n_bins": "--n-bins", "layer": "--layer", "overwrite": "--overwrite",
         "skip_empty": "--keep-empty", "tie_break": "--tie-break", "truncate": "--truncate", "preset": "--preset",
         "chunk_size": "--chunk-size", "seed": "--seed"}
FLAG_VALUES = {"gene_column=None": "--gene-column index", "skip_empty=False": "--keep-empty",
               "overwrite=True": "--overwrite"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize-cells", help="tokenize single cells (Geneformer rank value / scGPT bins) from an .h5ad",
        description="Tokenize every cell of an .h5ad file (read backed, in chunks) with Geneformer's "
                    "rank-value encoding (--method rank) or scGPT's value binning (--method bin). Output: "
                    ".npz, .parquet, or a Hugging Face datasets folder (input_ids, length), by --format or "
                    "the suffix of --out. Summaries go to stderr.")
    p.add_argument("input", help="input .h5ad (cells x genes counts)")
    p.add_argument("--method", choices=("rank", "bin"), required=True)
    p.add_argument("--out", required=True, help="output path (.npz, .parquet, or a folder for a datasets dataset)")
    p.add_argument("--format", choices=("npz", "parquet", "dataset"), default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of a different job")
    p.add_argument("--layer", default=None, help="read adata.layers[LAYER] instead of X")
    p.add_argument("--gene-column", default=None,
                   help="var column with gene keys (default: ensembl_id for rank, var_names for bin; 'index' = var_names)")
    p.add_argument("--obs-columns", default="", help="comma-separated obs columns to carry into the output")
    p.add_argument("--filter-column", default=None,
                   help="obs column; only cells where it is 1 are tokenized (rank default: filter_pass when present)")
    p.add_argument("--chunk-size", type=int, default=8192, help="cells per chunk (bounds memory)")
    p.add_argument("--threads", type=int, default=0, help="C++ threads (0 = all cores)")
    p.add_argument("--integer-check", choices=("warn", "error", "ignore"), default=None,
                   help="non-integer counts (default: warn for rank, ignore for bin)")
    p.add_argument("--keep-empty", action="store_true", default=None,
                   help="keep cells without any known gene (the default for bin, as scGPT keeps them as [<cls>])")
    p.add_argument("--skip-empty", action="store_true", default=None,
                   help="leave out cells without any known gene (the default for rank, as Geneformer drops them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("rank (Geneformer); refused with --method bin")
    g.add_argument("--token-dict", help="token dictionary (Geneformer .pkl, .json or .tsv)")
    g.add_argument("--gene-medians", help="gene median dictionary (.pkl, .json or .tsv)")
    g.add_argument("--preset", choices=("V1", "V2"), default=None, help="default: V2")
    g.add_argument("--model-input-size", type=int, default=None)
    g.add_argument("--symbol-table", default=None, help="symbol -> Ensembl TSV (header: ensembl_id, symbol)")
    g.add_argument("--total-counts-column", default=None,
                   help="obs column with total counts (default n_counts; summed over all genes when absent)")
    b = p.add_argument_group("bin (scGPT); refused with --method rank")
    b.add_argument("--vocab", help="scGPT vocab.json (gene symbol -> id)")
    b.add_argument("--n-bins", type=int, default=None, help="default: 51")
    b.add_argument("--max-len", type=int, default=None, help="tokens per cell including <cls>")
    b.add_argument("--truncate", choices=("sample", "top", "scgpt"), default=None,
                   help="over --max-len: seeded subset (default), most expressed, or scGPT pad_batch replay")
    b.add_argument("--tie-break", choices=("deterministic", "random"), default=None, help="default: deterministic")
    b.add_argument("--seed", type=int, default=None, help="default: 0")
    b.add_argument("--gene-subset", default=None, help="boolean var column (e.g. highly_variable) of genes to keep")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def check_args(args: argparse.Namespace) -> None:
    rank = args.method == "rank"
    refuse_unless(args, rank, RANK_ONLY, "to --method bin (only to --method rank)")
    refuse_unless(args, not rank, BIN_ONLY, "to --method rank (only to --method bin)")
    if rank and (not args.token_dict or not args.gene_medians):
        raise UsageError("--method rank needs --token-dict and --gene-medians")
    if not rank and not args.vocab:
        raise UsageError("--method bin needs --vocab")
    if args.keep_empty and args.skip_empty:
        raise UsageError("--keep-empty and --skip-empty exclude each other")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    check_format(args.out, args.format)
    existing_path(args.input, "input")
    for flag in ("token_dict", "gene_medians", "symbol_table", "vocab"):
        v = getattr(args, flag)
        if v is not None:
            existing_path(v, "--" + flag.replace("_", "-"))


_SUFFIXES = {"npz": (".npz",), "parquet": (".parquet", ".pq")}


def check_format(out: str, fmt: str | None) -> None:
    """``--format`` and the suffix of ``--out`` must agree (exit 2): the output is written exactly at
    ``--out`` and read back by its suffix, so ``--out x.out --format npz`` is refused rather than
    written as ``x.out.npz`` or as an npz that no rerun recognises."""
    if fmt is None:
        return
    name = out.lower().rstrip("/")
    if fmt in _SUFFIXES:
        if not name.endswith(_SUFFIXES[fmt]):
            raise UsageError(f"--format {fmt} writes one {_SUFFIXES[fmt][0]} file, but --out {out} does not end in "
                             f"{' or '.join(_SUFFIXES[fmt])} (name it {out.rstrip('/')}{_SUFFIXES[fmt][0]}, "
                             "or leave out --format)")
        return
    for other, sufs in _SUFFIXES.items():
        if name.endswith(sufs):
            raise UsageError(f"--format {fmt} writes a folder, but --out {out} ends in {sufs[0]} (the suffix of "
                             f"--format {other}); name the folder otherwise, or leave out --format")


def make_tokenizer(args: argparse.Namespace):
    obs_columns = [c for c in args.obs_columns.split(",") if c]
    if args.method == "rank":
        from omicskern.tokenizers.rank_value import RankValueTokenizer

        gene_column = args.gene_column or "ensembl_id"
        return RankValueTokenizer(
            args.token_dict, args.gene_medians, preset=args.preset or "V2", model_input_size=args.model_input_size,
            gene_column=None if gene_column == "index" else gene_column, symbol_table=args.symbol_table,
            total_counts_column=args.total_counts_column or "n_counts",
            filter_column=args.filter_column if args.filter_column else "filter_pass",
            obs_columns=obs_columns, integer_check=args.integer_check or "warn",
            skip_empty=not args.keep_empty, chunk_size=args.chunk_size, num_threads=args.threads)  # Geneformer: drop
    from omicskern.tokenizers.binned_value import BinnedValueTokenizer

    gene_column = None if args.gene_column in (None, "index") else args.gene_column
    return BinnedValueTokenizer(
        args.vocab, n_bins=51 if args.n_bins is None else args.n_bins, gene_column=gene_column,
        gene_subset=args.gene_subset, tie_break=args.tie_break or "deterministic",
        seed=args.seed or 0, truncate=args.truncate or "sample",
        filter_column=args.filter_column, obs_columns=obs_columns,
        integer_check=args.integer_check or "ignore", skip_empty=bool(args.skip_empty),  # scGPT: keep as [<cls>]
        chunk_size=args.chunk_size, num_threads=args.threads, max_length=args.max_len)


def identity(args: argparse.Namespace) -> tuple[dict, dict]:
    """(producer identity, settings) of the job: the dictionaries by content, the flags by value."""
    from omicskern.pipelines.tokenize import file_digest

    files = RANK_ONLY[:2] + ["symbol_table"] if args.method == "rank" else ["vocab"]
    producer = {"method": args.method,
                **{f: file_digest(getattr(args, f)) for f in files if getattr(args, f) is not None}}
    skip = {"input", "out", "format", "overwrite", "threads", "no_progress", "func", "_parser", "_flags",
            "_flag_values", "command", "layer", *files}
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    return producer, settings


def run(args: argparse.Namespace) -> int:
    from omicskern.pipelines.tokenize import tokenize_cells

    from omicskern.io.cells import check_h5ad
    from omicskern.io.writers import check_writable

    check_args(args)
    check_h5ad(args.input)  # a folder, an empty or non-HDF5 file: one line naming it, before any work
    check_writable(args.out, what="--out")  # a read-only folder fails now, not after tokenizing
    tok = make_tokenizer(args)
    producer, settings = identity(args)
    res = tokenize_cells(args.input, tok, args.out, fmt=args.format, layer=args.layer, overwrite=args.overwrite,
                         identity=producer, settings=settings, progress=not args.no_progress)
    if res.reused:
        print(f"{res.out} already holds this job's output ({res.fmt}); nothing to do", file=sys.stderr)
        return 0
    if res.report is not None and hasattr(res.report, "summary"):
        print(res.report.summary(), file=sys.stderr)
    print(f"  wrote {res.cells:,} cells, {res.tokens:,} tokens to {res.out} ({res.fmt})", file=sys.stderr)
    return 0
