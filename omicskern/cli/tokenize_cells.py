"""``omicskern tokenize-cells IN.h5ad --method rank|bin ... --out OUT``: Geneformer rank-value or
scGPT binned-value tokens of every cell, streamed from the (backed) h5ad in chunks."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize-cells", help="tokenize single cells (Geneformer rank value / scGPT bins) from an .h5ad",
        description="Tokenize every cell of an .h5ad file (read backed, in chunks) with Geneformer's "
                    "rank-value encoding (--method rank) or scGPT's value binning (--method bin). Output: "
                    ".npz, .parquet, or a Hugging Face datasets folder (input_ids, length), by --format or "
                    "the suffix of --out.")
    p.add_argument("input", help="input .h5ad (cells x genes counts)")
    p.add_argument("--method", choices=("rank", "bin"), required=True)
    p.add_argument("--out", required=True, help="output path (.npz, .parquet, or a folder for a datasets dataset)")
    p.add_argument("--format", choices=("npz", "parquet", "dataset"), default=None)
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
    p.add_argument("--keep-empty", action="store_true", help="keep cells without any known gene (empty sequences)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("rank (Geneformer)")
    g.add_argument("--token-dict", help="token dictionary (Geneformer .pkl, .json or .tsv)")
    g.add_argument("--gene-medians", help="gene median dictionary (.pkl, .json or .tsv)")
    g.add_argument("--preset", choices=("V1", "V2"), default="V2")
    g.add_argument("--model-input-size", type=int, default=None)
    g.add_argument("--symbol-table", default=None, help="symbol -> Ensembl TSV (header: ensembl_id, symbol)")
    g.add_argument("--total-counts-column", default="n_counts",
                   help="obs column with total counts (summed over all genes when absent)")
    b = p.add_argument_group("bin (scGPT)")
    b.add_argument("--vocab", help="scGPT vocab.json (gene symbol -> id)")
    b.add_argument("--n-bins", type=int, default=51)
    b.add_argument("--max-len", type=int, default=None, help="tokens per cell including <cls>")
    b.add_argument("--truncate", choices=("sample", "top", "scgpt"), default="sample",
                   help="over --max-len: seeded subset, most expressed, or scGPT pad_batch replay")
    b.add_argument("--tie-break", choices=("deterministic", "random"), default="deterministic")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--gene-subset", default=None, help="boolean var column (e.g. highly_variable) of genes to keep")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omicskern.errors import OmicskernError
    from omicskern.tokenizers.cells_result import CellTokens, TokenizeReport, infer_format

    obs_columns = [c for c in args.obs_columns.split(",") if c]
    fmt = args.format or infer_format(args.out)
    try:
        if args.method == "rank":
            if not args.token_dict or not args.gene_medians:
                print("error: --method rank needs --token-dict and --gene-medians", file=sys.stderr)
                return 2
            from omicskern.tokenizers.rank_value import RankValueTokenizer

            gene_column = args.gene_column or "ensembl_id"
            tok = RankValueTokenizer(
                args.token_dict, args.gene_medians, preset=args.preset, model_input_size=args.model_input_size,
                gene_column=None if gene_column == "index" else gene_column, symbol_table=args.symbol_table,
                total_counts_column=args.total_counts_column,
                filter_column=args.filter_column if args.filter_column else "filter_pass",
                obs_columns=obs_columns, integer_check=args.integer_check or "warn",
                skip_empty=not args.keep_empty, chunk_size=args.chunk_size, num_threads=args.threads)
        else:
            if not args.vocab:
                print("error: --method bin needs --vocab", file=sys.stderr)
                return 2
            from omicskern.tokenizers.binned_value import BinnedValueTokenizer

            gene_column = None if args.gene_column in (None, "index") else args.gene_column
            tok = BinnedValueTokenizer(
                args.vocab, n_bins=args.n_bins, gene_column=gene_column, gene_subset=args.gene_subset,
                tie_break=args.tie_break, seed=args.seed, max_len=args.max_len, truncate=args.truncate,
                filter_column=args.filter_column, obs_columns=obs_columns,
                integer_check=args.integer_check or "ignore", skip_empty=not args.keep_empty,
                chunk_size=args.chunk_size, num_threads=args.threads)
        report = TokenizeReport()
        parts = list(tok.iter_tokenize(args.input, layer=args.layer, progress=not args.no_progress, report=report))
        result = CellTokens.concat(parts, report)
        result.save(args.out, fmt)
    except (OmicskernError, ValueError, FileNotFoundError, ImportError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    n_tok = len(result.input_ids)
    print(f"  wrote {len(result):,} cells, {n_tok:,} tokens to {args.out} ({fmt})", file=sys.stderr)
    return 0
