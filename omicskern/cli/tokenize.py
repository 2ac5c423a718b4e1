"""``omicskern tokenize``: FASTA -> token ids on disk, record by record or in windows.

Parses the command line and calls :func:`omicskern.pipelines.tokenize.tokenize_fasta`; the
conventions (errors, exit status, stderr) are :mod:`omicskern.cli._common`'s.

Output (``--out``):

* a path ending in ``.npz``: one file with every row (a record, or a window of one):
  ``ids`` int32 [T] (all rows back to back), ``offsets`` int64 [R+1] (row ``r`` is
  ``ids[offsets[r]:offsets[r+1]]``), ``names`` str [R], ``starts``/``ends`` int64 [R] (0-based
  half-open base range of each row in its record), ``meta`` (a JSON string: tokenizer, input,
  window) and ``omicskern_job`` (the job key). Written to a temporary file and renamed, so a file
  at ``--out`` is always complete.
* ``-``: one text line per row on stdout, ``name<TAB>start<TAB>end<TAB>id id id...``.
* any other path: a directory, resumable: ``shard-00000.npz``, ... (one per work unit: a record,
  or ``--unit-bases`` of its windows; same keys) and ``manifest.json`` (the job and, per unit,
  its shard and whether it is done). ``--rank R --world-size W`` runs rank R's share of the units
  (several processes may write one folder). Running the same command again skips units already
  done.

A job is keyed on the input's content, the tokenizer's identity and the settings, not on paths:
a moved or renamed FASTA resumes, a changed one is refused (as is any output of another job)
unless ``--overwrite``.

Checked before any work (exit 2 for the command line, 1 for the files): ``--records`` names each
record once (a repeated name is refused, not silently deduplicated), ``--threads`` is >= 0, and
the ``--out`` location is writable (a read-only folder fails at once, not after tokenizing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omicskern.cli._common import CommandError, UsageError, existing_path, flagify, refuse_unless

# pipeline / tokenizer parameter -> flag, for messages
FLAGS = {"overwrite": "--overwrite", "keep_case": "--keep-case", "window": "--window", "stride": "--stride",
         "on_invalid": "--on-invalid", "add_special_tokens": "--no-special-tokens", "k": "--k", "mode": "--kmer-mode",
         "rank": "--rank", "world_size": "--world-size", "max_unit_bases": "--unit-bases", "records": "--records"}
FLAG_VALUES = {"add_special_tokens=False": "--no-special-tokens", "keep_case=True": "--keep-case",
               "overwrite=True": "--overwrite", "try without keep_case": "leave out --keep-case",
               "pass uppercase=True": "leave out --keep-case"}


def default_fasta() -> Path:
    """The bundled lambda phage genome (48,502 bp)."""
    return Path(__file__).resolve().parent.parent / "data" / "lambda_phage.fa"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize", help="tokenize a FASTA file (plain or bgzipped) into token ids",
        description="Tokenize a FASTA file record by record or in windows and write the token ids. "
                    "Without FASTA, tokenizes the bundled lambda phage genome. Summaries go to stderr.")
    p.add_argument("fasta", nargs="?", default=None, help="FASTA file (.fa, or BGZF .fa.gz); default: bundled lambda phage")
    p.add_argument("--tokenizer", choices=("char", "kmer", "bpe"), default="char", help="default: char")
    p.add_argument("--k", type=int, default=None, help="k-mer length (3..8) for --tokenizer kmer; default: 6")
    p.add_argument("--kmer-mode", choices=("nt", "overlap"), default=None,
                   help="--tokenizer kmer: nt = Nucleotide Transformer non-overlapping (default); overlap = DNABERT-1 stride 1")
    p.add_argument("--tokenizer-json", default=None, help="Hugging Face tokenizer.json for --tokenizer bpe")
    p.add_argument("--keep-case", action="store_true", default=None,
                   help="--tokenizer bpe: do not upper-case lower-case (soft-masked) bases when the vocabulary has no "
                        "lower-case tokens (by default they are upper-cased, else they would become [UNK])")
    p.add_argument("--window", type=int, default=None, help="window length in bases (default: whole records)")
    p.add_argument("--stride", type=int, default=None, help="window stride in bases (default: --window)")
    p.add_argument("--threads", type=int, default=0, help="threads of the C++ core (>= 0); default: 0 = all cores")
    p.add_argument("--on-invalid", choices=("error", "unk", "n"), default=None,
                   help="char/kmer: a byte outside the alphabet raises (default), becomes the unknown token, or reads as N")
    p.add_argument("--no-special-tokens", action="store_true", help="do not add [CLS]/[SEP]-style tokens")
    p.add_argument("--records", nargs="+", default=None, metavar="NAME",
                   help="only these records, in this order (each at most once: a name given twice is refused)")
    p.add_argument("--out", default=None,
                   help="FILE.npz (one file), - (text rows on stdout) or a directory (shards + manifest.json, "
                        "resumable); without it nothing is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of a different job")
    p.add_argument("--rank", type=int, default=None, help="directory --out: this process's rank (0-based); default 0")
    p.add_argument("--world-size", type=int, default=None, help="directory --out: number of ranks; default 1")
    p.add_argument("--unit-bases", type=int, default=None,
                   help="directory --out: work units (shards) of about this many bases: short records are "
                        "packed together, and with --window long records are cut")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def check_args(args) -> None:
    """Argument errors (exit 2), before any work."""
    kmer, bpe = args.tokenizer == "kmer", args.tokenizer == "bpe"
    refuse_unless(args, kmer, ["k", "kmer_mode"], f"to --tokenizer {args.tokenizer} (only to --tokenizer kmer)")
    refuse_unless(args, bpe, ["tokenizer_json", "keep_case"], f"to --tokenizer {args.tokenizer} (only to --tokenizer bpe)")
    refuse_unless(args, not bpe, ["on_invalid"], "to --tokenizer bpe (BPE maps unknown bytes to [UNK])")
    if bpe and not args.tokenizer_json:
        raise UsageError("--tokenizer bpe needs --tokenizer-json PATH")
    if kmer and not 3 <= (args.k or 6) <= 8:
        raise UsageError(f"--k must be between 3 and 8, got {args.k}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    if args.records:
        seen, dup = set(), []
        for n in args.records:
            if n in seen and n not in dup:
                dup.append(n)
            seen.add(n)
        if dup:  # refused, not deduplicated: a repeated name is more likely a typo than a wish
            raise UsageError(f"--records: {', '.join(dup)} given more than once (name each record once)")
    if args.window is not None and args.window <= 0:
        raise UsageError("--window must be positive")
    if args.stride is not None and (args.stride <= 0 or args.window is None):
        raise UsageError("--stride needs --window and must be positive")
    sharded = args.out not in (None, "-") and not args.out.lower().endswith(".npz")
    refuse_unless(args, sharded, ["rank", "world_size", "unit_bases"], "without a directory --out")
    refuse_unless(args, args.out is not None, ["overwrite"], "without --out")
    if args.unit_bases is not None and args.unit_bases <= 0:
        raise UsageError("--unit-bases must be positive")
    world = 1 if args.world_size is None else args.world_size
    if world < 1:
        raise UsageError(f"--world-size must be >= 1, got {world}")
    if not 0 <= (args.rank or 0) < world:
        raise UsageError(f"--rank must be in 0..{world - 1} (--world-size {world}), got {args.rank}")
    if args.fasta is not None:
        existing_path(args.fasta, "FASTA")
    if args.tokenizer_json is not None and not Path(args.tokenizer_json).exists():
        raise UsageError(f"--tokenizer-json: cannot load {args.tokenizer_json}: not found")


def make_tokenizer(args):
    if args.tokenizer == "char":
        from omicskern.tokenizers.char import CharTokenizer
        return CharTokenizer(on_invalid=args.on_invalid or "error", num_threads=args.threads)
    if args.tokenizer == "kmer":
        from omicskern.tokenizers.kmer import KmerTokenizer
        try:
            return KmerTokenizer(args.k or 6, mode=args.kmer_mode or "nt", on_invalid=args.on_invalid or "error",
                                 num_threads=args.threads)
        except ValueError as e:
            raise UsageError(f"--k/--kmer-mode: {e}") from None
    from omicskern.tokenizers.bpe import BPETokenizer

    try:
        tok = BPETokenizer.from_file(args.tokenizer_json)
    except (OSError, ValueError, NotImplementedError) as e:
        raise CommandError(f"cannot load {args.tokenizer_json}: {e}") from None
    tok.num_threads = args.threads
    return tok


def describe(args) -> dict:
    """The settings as given (written into the outputs' meta; the job key is the pipeline's)."""
    tok = {"tokenizer": args.tokenizer, "add_special_tokens": not args.no_special_tokens}
    if args.tokenizer == "kmer":
        tok.update(k=args.k or 6, kmer_mode=args.kmer_mode or "nt")
    if args.tokenizer in ("char", "kmer"):
        tok["on_invalid"] = args.on_invalid or "error"
    if args.tokenizer == "bpe":
        tok["tokenizer_json"] = Path(args.tokenizer_json).name
        tok["keep_case"] = bool(args.keep_case)
    return {"tokenizer": tok}


def _text_sink(rows: dict) -> None:
    out = sys.stdout
    ids, offs = rows["ids"], rows["offsets"]
    for r, name in enumerate(rows["names"]):
        out.write(f"{name}\t{rows['starts'][r]}\t{rows['ends'][r]}\t")
        out.write(" ".join(map(str, ids[offs[r]:offs[r + 1]].tolist())))
        out.write("\n")


def run(args) -> int:
    from omicskern.errors import InvalidSequenceError
    from omicskern.pipelines.tokenize import tokenize_fasta

    check_args(args)
    if args.out not in (None, "-"):
        from omicskern.io.writers import check_writable

        check_writable(args.out, what="--out")  # before any work: not after the whole genome is tokenized
    fasta = Path(args.fasta) if args.fasta else default_fasta()
    if args.records:
        from omicskern.io.fasta import FastaFile

        with FastaFile(fasta) as fa:
            known = set(fa.names)  # O(1) per record: 300k-record FASTAs
            missing = [n for n in args.records if n not in known]
        if missing:
            raise UsageError(f"--records: not in {fasta}: {', '.join(missing)}")
    tok = make_tokenizer(args)
    to_stdout = args.out == "-"
    out = None if args.out in (None, "-") else Path(args.out)
    try:
        res = tokenize_fasta(
            fasta, tok, out=out, window=args.window, stride=args.stride, records=args.records,
            add_special_tokens=not args.no_special_tokens, keep_case=bool(args.keep_case), overwrite=args.overwrite,
            rank=args.rank or 0, world_size=args.world_size or 1, max_unit_bases=args.unit_bases,
            describe=describe(args), sink=_text_sink if to_stdout else None, progress=not args.quiet,
            on_note=lambda msg: print(f"omicskern tokenize: note: {flagify(msg, FLAGS, FLAG_VALUES)}",
                                      file=sys.stderr, flush=True))
    except InvalidSequenceError as e:
        raise CommandError(f"{e}\n  (use --on-invalid unk or --on-invalid n to map such bytes instead)") from None

    err = sys.stderr
    from omicskern._native import load_C
    threads = args.threads if args.threads > 0 else load_C().hardware_threads()
    desc = args.tokenizer + (f" (k={args.k or 6}, {args.kmer_mode or 'nt'})" if args.tokenizer == "kmer" else "")
    print(f"tokenized {res.records} record(s), {res.rows} row(s) from {fasta}", file=err)
    if res.units_skipped:
        print(f"  skipped {res.units_skipped} unit(s) already done in {out}", file=err)
    print(f"  tokenizer: {desc}, vocabulary {tok.vocab_size}, threads {threads}"
          + (f", windows {args.window} / stride {args.stride or args.window}" if args.window else ""), file=err)
    print(f"  {res.bases:,} bases -> {res.tokens:,} tokens", file=err)
    took = f"{res.encode_s * 1e3:.2f} ms" if res.encode_s < 1 else f"{res.encode_s:.2f} s"
    print(f"  tokenization {took} = {res.mbps:,.1f} Mbp/s; total {res.wall_s:.2f} s (incl. reading FASTA)", file=err)
    if out is not None:
        rank = f", rank {args.rank or 0} of {args.world_size}" if (args.world_size or 1) > 1 else ""
        state = "" if not res.sharded else (" (complete)" if res.complete else " (other ranks' units still to do)")
        print(f"  wrote {out}" + (f" (manifest.json + one shard per unit{rank}){state}" if res.sharded else ""),
              file=err)
    elif to_stdout:
        print("  wrote rows to stdout", file=err)
    else:
        print("  (no --out given: tokens not written)", file=err)
    return 0
