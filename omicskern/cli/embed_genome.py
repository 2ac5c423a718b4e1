"""``omicskern embed-genome``: FASTA -> windows -> tokens -> model -> a Zarr (or npy) store.

Parses the command line and calls :func:`omicskern.pipelines.genome.embed_genome`; the
conventions (errors, exit status, stderr) are :mod:`omicskern.cli._common`'s. With no arguments it
embeds the bundled lambda phage genome with the built-in model into ``lambda_phage.embeddings.zarr``
and prints how to read it. Under ``torchrun --nproc_per_node N -m omicskern embed-genome ...``
every rank takes its share of the shards; rerunning the same command resumes a killed job.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omicskern.cli._common import UsageError, existing_path, flagify

FLAGS = {"window": "--window", "stride": "--stride", "regions": "--regions", "pooling": "--pooling",
         "layer": "--layer", "per_token": "--per-token", "track_bin": "--track-bin", "rc": "--rc",
         "n_policy": "--n-policy", "batch_tokens": "--batch-tokens", "device": "--device", "dtype": "--dtype",
         "out_dtype": "--out-dtype", "threads": "--threads", "fmt": "--format", "shard_windows": "--shard-windows",
         "overwrite": "--overwrite", "keep_case": "--keep-case"}
FLAG_VALUES = {"overwrite=True": "--overwrite", "keep_case=True": "--keep-case", "per_token=True": "--per-token",
               "track_bin=N": "--track-bin N", "rc='none'": "--rc none", "format='npy'": "--format npy"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed-genome", help="embed a genome (FASTA) window by window into a Zarr store",
        description="Cut a genome into windows, tokenize them, run the model and write one embedding per window "
                    "(plus optional per-token states and binned tracks) to a Zarr v3 store, resumably. Without "
                    "arguments: the bundled lambda phage genome with the built-in model. Summaries go to stderr.")
    p.add_argument("fasta", nargs="?", default=None, help="FASTA (.fa, or BGZF .fa.gz); default: bundled lambda phage")
    p.add_argument("--model", default="builtin", help="checkpoint folder, or 'builtin' (default)")
    p.add_argument("--out", default=None, help="OUT.zarr (default: <fasta name>.embeddings.zarr here); with --format "
                                               "npy a folder of .npy files")
    p.add_argument("--format", dest="fmt", choices=("zarr", "npy"), default=None, help="default: zarr")
    p.add_argument("--window", type=int, default=None, help="window in bases (default: what the model's max length holds)")
    p.add_argument("--stride", type=int, default=None, help="stride in bases (default: --window)")
    p.add_argument("--regions", default=None, help="BED file: embed only these regions")
    p.add_argument("--pooling", choices=("mean", "cls", "last", "max", "none"), default="mean", help="default: mean")
    p.add_argument("--layer", type=int, default=None, help="hidden-state index (0 = embeddings, -1 = last; default: the model's)")
    p.add_argument("--per-token", action="store_true", help="also store every token's state (tokens/states)")
    p.add_argument("--track-bin", type=int, default=None, metavar="BP",
                   help="also store tracks: per-base states averaged over bins of BP bases")
    p.add_argument("--rc", choices=("none", "average", "concat"), default="none",
                   help="also embed the reverse complement: average it with the forward strand, or concatenate")
    p.add_argument("--n-policy", default="skip", metavar="keep|skip|skip:F",
                   help="skip windows with more than F N bases (skip = skip:0.5; default), or keep all")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per model call (default 16384)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model compute dtype (default: the checkpoint's; bfloat16 recommended on GPU)")
    p.add_argument("--out-dtype", choices=("float16", "float32"), default="float16", help="stored dtype (default float16)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: this process's cores)")
    p.add_argument("--shard-windows", type=int, default=None, help="windows per shard (resume unit); default ~8 MB")
    p.add_argument("--keep-case", action="store_true", default=None,
                   help="do not upper-case soft-masked bases for vocabularies without lower-case tokens")
    p.add_argument("--overwrite", action="store_true", help="replace a store of a different job")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def check_args(args) -> None:
    for name in ("window", "stride", "track_bin", "batch_tokens", "shard_windows"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"{FLAGS[name]} must be >= 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.fasta is not None:
        existing_path(args.fasta, "FASTA")
    if args.regions is not None:
        existing_path(args.regions, "--regions")
    if args.model != "builtin" and not args.model.startswith("builtin:"):
        existing_path(args.model, "--model")
    from omicskern.pipelines.genome import NPolicy

    try:
        NPolicy.parse(args.n_policy)
    except ValueError as e:
        raise UsageError(str(e).replace("n_policy=", "--n-policy ")) from None
    if args.pooling == "none" and not args.per_token and args.track_bin is None:
        raise UsageError("--pooling none stores no embeddings: add --per-token or --track-bin BP")
    if args.per_token and args.rc != "none":
        raise UsageError("--per-token stores the forward strand's tokens only: leave out --rc "
                         "(--track-bin averages both strands per base)")


def run(args) -> int:
    from omicskern.cli.tokenize import default_fasta
    from omicskern.pipelines.distributed import Ranks
    from omicskern.pipelines.genome import embed_genome

    check_args(args)
    ranks = Ranks.from_env()
    fasta = Path(args.fasta) if args.fasta else default_fasta()
    name = fasta.name
    for suffix in (".gz", ".fa", ".fasta", ".fna"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    out = Path(args.out) if args.out else Path(f"{name}.embeddings" + (".zarr" if (args.fmt or "zarr") == "zarr" else ""))
    err = sys.stderr

    def note(msg: str) -> None:
        if ranks.is_main:
            print(f"omicskern embed-genome: note: {flagify(msg, FLAGS, FLAG_VALUES)}", file=err, flush=True)

    res = embed_genome(
        fasta, args.model, out, window=args.window, stride=args.stride, regions=args.regions, pooling=args.pooling,
        layer=args.layer, per_token=args.per_token, track_bin=args.track_bin, rc=args.rc, n_policy=args.n_policy,
        batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype, out_dtype=args.out_dtype,
        threads=args.threads, fmt=args.fmt, shard_windows=args.shard_windows, overwrite=args.overwrite,
        keep_case=bool(args.keep_case), progress=not args.quiet and ranks.is_main, on_note=note, ranks=ranks)
    if not ranks.is_main:
        return 0
    print(f"embedded {fasta} with model {args.model}", file=err)
    for line in res.summary().splitlines():
        print("  " + line, file=err)
    if res.complete:
        store = res.store
        c = store.attrs.get("channels")
        first = store.records["name"][0] if store.records["name"] else "NAME"
        print(f"  read it: python -c \"from omicskern.io.genome_store import GenomeEmbeddings; "
              f"s = GenomeEmbeddings('{out}'); print(s.region('{first}:1-5,000').embeddings.shape)\"", file=err)
        if (args.fmt or "zarr") == "zarr":
            print(f"  or with zarr: zarr.open_group('{out}')['embeddings']  # [{len(store):,}, {c}]", file=err)
    return 0
