"""``omicskern score-variants``: zero-shot variant-effect scores from a VCF.

Parses the command line and calls :func:`omicskern.pipelines.variants.score_variants`; the
conventions (errors, exit status, stderr) are :mod:`omicskern.cli._common`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omicskern.cli._common import UsageError, existing_path

FLAGS = {"scores": "--score", "window": "--window", "strand": "--strand", "pooling": "--pooling",
         "max_allele": "--max-allele", "allow_ref_mismatch": "--allow-ref-mismatch", "contig_map": "--contig-map",
         "batch_tokens": "--batch-tokens", "device": "--device", "dtype": "--dtype", "threads": "--threads",
         "overwrite": "--overwrite", "unit_variants": "--unit-variants"}
FLAG_VALUES = {"overwrite=True": "--overwrite", "contig_map='auto'": "--contig-map auto",
               "allow_ref_mismatch": "--allow-ref-mismatch"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score-variants", help="zero-shot variant-effect scores (VCF + reference FASTA + model)",
        description="Score every variant of a VCF in a window of the reference centred on it: llr (causal LMs), "
                    "masked-llr (masked LMs) and/or embedding distances. One row per ALT allele; variants that "
                    "cannot be scored are kept with a flag. Summaries go to stderr.")
    p.add_argument("--fasta", required=True, help="reference FASTA (.fa, or BGZF .fa.gz)")
    p.add_argument("--vcf", required=True, help="VCF (.vcf, .vcf.gz bgzipped, or .bcf); sorted or not")
    p.add_argument("--model", default="builtin", help="checkpoint folder, or 'builtin' (default: the built-in causal LM)")
    p.add_argument("--out", required=True, help="SCORES.tsv or SCORES.parquet (written atomically)")
    p.add_argument("--score", dest="scores", action="append", choices=("llr", "masked-llr", "embedding"), default=None,
                   help="a score to compute (repeatable); default: llr for causal LMs, masked-llr for masked LMs")
    p.add_argument("--window", type=int, default=None, help="window in bases (default: what the model's max length holds)")
    p.add_argument("--strand", choices=("forward", "both"), default="forward",
                   help="both: average over the forward and the reverse-complement windows")
    p.add_argument("--pooling", choices=("mean", "cls", "last", "max"), default="mean", help="--score embedding pooling")
    p.add_argument("--max-allele", type=int, default=50, help="longest REF/ALT scored, in bases (default 50)")
    p.add_argument("--allow-ref-mismatch", action="store_true", help="also score variants whose REF differs from the FASTA")
    p.add_argument("--contig-map", default=None, metavar="auto|FILE",
                   help="map VCF contig names to FASTA records: auto (chr1 <-> 1) or a two-column file")
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per model call (default 8192)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: this process's cores)")
    p.add_argument("--unit-variants", type=int, default=512, help="variants per resumable shard (default 512)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def run(args) -> int:
    from omicskern.pipelines.variants import read_contig_map, score_variants

    existing_path(args.fasta, "--fasta")
    existing_path(args.vcf, "--vcf")
    if args.model != "builtin" and not args.model.startswith("builtin:"):
        existing_path(args.model, "--model")
    for name in ("window", "batch_tokens", "max_allele", "threads", "unit_variants"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"{FLAGS[name]} must be >= 1, got {v}")
    if not args.out.lower().endswith((".tsv", ".parquet")):
        raise UsageError(f"--out must end in .tsv or .parquet, got {args.out}")
    cmap = args.contig_map
    if cmap not in (None, "auto"):
        existing_path(cmap, "--contig-map")
        cmap = read_contig_map(cmap)
    res = score_variants(args.fasta, args.vcf, args.model, Path(args.out), scores=args.scores, window=args.window,
                         strand=args.strand, pooling=args.pooling, max_allele=args.max_allele,
                         allow_ref_mismatch=args.allow_ref_mismatch, contig_map=cmap, batch_tokens=args.batch_tokens,
                         device=args.device, dtype=args.dtype, threads=args.threads, overwrite=args.overwrite,
                         unit_variants=args.unit_variants)
    from omicskern.pipelines.distributed import Ranks

    if not Ranks.from_env().is_main:
        return 0
    print(f"scored {args.vcf} against {args.fasta} with model {args.model}", file=sys.stderr)
    for line in res.summary().splitlines():
        print("  " + line, file=sys.stderr)
    print(f"  wrote {args.out}", file=sys.stderr)
    return 0
