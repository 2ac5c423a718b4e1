"""``omicskern tokenize``: FASTA -> token ids on disk, record by record or in windows.

Output (``--out``):

* a path ending in ``.npz``: one file with every row (a record, or a window of one):
  ``ids`` int32 [T] (all rows back to back), ``offsets`` int64 [R+1] (row ``r`` is
  ``ids[offsets[r]:offsets[r+1]]``), ``names`` str [R], ``starts``/``ends`` int64 [R] (0-based
  half-open base range of each row in its record) and ``meta`` (a JSON string: tokenizer, input,
  window). Written to a temporary file and renamed, so a file at ``--out`` is always complete.
* any other path: a directory, resumable: ``shard-00000.npz``, ... (one per record, same keys)
  and ``manifest.json`` (the job's settings and, per record, its shard and whether it is done).
  Each shard and every manifest update is written atomically. Running the same command again
  skips records already done; a directory holding a different job is refused unless
  ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MANIFEST_FORMAT = "omicskern.tokens/1"


def default_fasta() -> Path:
    """The bundled lambda phage genome (48,502 bp)."""
    return Path(__file__).resolve().parent.parent / "data" / "lambda_phage.fa"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize", help="tokenize a FASTA file (plain or bgzipped) into token ids",
        description="Tokenize a FASTA file record by record or in windows and write the token ids. "
                    "Without FASTA, tokenizes the bundled lambda phage genome.")
    p.add_argument("fasta", nargs="?", default=None, help="FASTA file (.fa, or BGZF .fa.gz); default: bundled lambda phage")
    p.add_argument("--tokenizer", choices=("char", "kmer", "bpe"), default="char", help="default: char")
    p.add_argument("--k", type=int, default=6, help="k-mer length (3..8) for --tokenizer kmer; default: 6")
    p.add_argument("--kmer-mode", choices=("nt", "overlap"), default="nt",
                   help="nt: Nucleotide Transformer non-overlapping (default); overlap: DNABERT-1 stride 1")
    p.add_argument("--tokenizer-json", default=None, help="Hugging Face tokenizer.json for --tokenizer bpe")
    p.add_argument("--window", type=int, default=None, help="window length in bases (default: whole records)")
    p.add_argument("--stride", type=int, default=None, help="window stride in bases (default: --window)")
    p.add_argument("--threads", type=int, default=0, help="threads of the C++ core; default: 0 = all cores")
    p.add_argument("--on-invalid", choices=("error", "unk", "n"), default="error",
                   help="char/kmer: a byte outside the alphabet raises (default), becomes the unknown token, or reads as N")
    p.add_argument("--no-special-tokens", action="store_true", help="do not add [CLS]/[SEP]-style tokens")
    p.add_argument("--records", nargs="+", default=None, metavar="NAME", help="only these records")
    p.add_argument("--out", default=None,
                   help="FILE.npz (one file) or a directory (one shard per record + manifest.json, resumable); "
                        "without it nothing is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output of a different job")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def make_tokenizer(args):
    if args.tokenizer == "char":
        from omicskern.tokenizers.char import CharTokenizer
        return CharTokenizer(on_invalid=args.on_invalid, num_threads=args.threads)
    if args.tokenizer == "kmer":
        from omicskern.tokenizers.kmer import KmerTokenizer
        return KmerTokenizer(args.k, mode=args.kmer_mode, on_invalid=args.on_invalid, num_threads=args.threads)
    if not args.tokenizer_json:
        raise SystemExit("omicskern tokenize: error: --tokenizer bpe needs --tokenizer-json PATH")
    from omicskern.tokenizers.bpe import BPETokenizer

    try:
        tok = BPETokenizer.from_file(args.tokenizer_json)
    except (OSError, ValueError, NotImplementedError) as e:
        raise SystemExit(f"omicskern tokenize: error: cannot load {args.tokenizer_json}: {e}") from None
    tok.num_threads = args.threads
    return tok


def _config(args, fasta: Path) -> dict:
    from omicskern import __version__
    st = fasta.stat()
    tok = {"tokenizer": args.tokenizer, "add_special_tokens": not args.no_special_tokens}
    if args.tokenizer == "kmer":
        tok.update(k=args.k, kmer_mode=args.kmer_mode)
    if args.tokenizer in ("char", "kmer"):
        tok["on_invalid"] = args.on_invalid
    if args.tokenizer == "bpe":
        tok["tokenizer_json"] = str(Path(args.tokenizer_json).resolve())
    return {"tokenizer": tok, "input": {"path": str(fasta.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
            "window": args.window, "stride": args.stride, "records": args.records, "omicskern": __version__}


def _save_npz(path: Path, rows: dict, meta: dict) -> None:
    """Atomic write: a temporary file in the same folder, then a rename."""
    import numpy as np
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, ids=rows["ids"], offsets=rows["offsets"], names=np.array(rows["names"], dtype=str),
                 starts=np.asarray(rows["starts"], dtype=np.int64), ends=np.asarray(rows["ends"], dtype=np.int64),
                 meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class _Stats:
    def __init__(self):
        self.records = self.rows = self.bases = self.tokens = 0
        self.encode_s = 0.0


def _tokenize_record(tok, fa, name: str, args, stats: _Stats, bar) -> dict:
    """All rows of one record: the whole record, or its windows (encoded in batches)."""
    import numpy as np
    from omicskern.errors import InvalidSequenceError
    from omicskern.io.fasta import window_starts

    add = not args.no_special_tokens
    data = fa.sequence(name).encode("utf-8", "surrogateescape")
    n = len(data)
    if args.window:
        stride = args.stride or args.window
        starts = window_starts(n, args.window, stride)
        ends = [min(s + args.window, n) for s in starts]
    else:
        starts, ends = [0], [n]
    view = memoryview(data)
    batch_bases = 1 << 24  # bounds the window copies held at once
    id_parts, len_parts = [], []
    i = 0
    while i < len(starts):
        j, size = i, 0
        while j < len(starts) and (j == i or size + ends[j] - starts[j] <= batch_bases):
            size += ends[j] - starts[j]
            j += 1
        seqs = [view[s:e] for s, e in zip(starts[i:j], ends[i:j])]
        t0 = time.perf_counter()
        try:
            batch = tok.encode_batch(seqs, padding=False, add_special_tokens=add)
        except InvalidSequenceError as e:
            row = i + (e.index or 0)
            pos = starts[row] + (e.position or 0)
            detail = str(e).split(": ", 1)[-1]
            raise InvalidSequenceError(f"record {name!r}, position {pos} (0-based): {detail}", index=e.index,
                                       position=pos, byte=e.byte, name=name) from None
        stats.encode_s += time.perf_counter() - t0
        id_parts.append(batch.input_ids)
        len_parts.append(np.diff(batch.cu_seqlens))
        stats.bases += size
        if bar is not None:
            bar.update(size)
        i = j
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int32)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    stats.records += 1
    stats.rows += len(starts)
    stats.tokens += int(ids.size)
    return {"ids": ids.astype(np.int32, copy=False), "offsets": offsets, "names": [name] * len(starts),
            "starts": starts, "ends": ends}


def _merge(parts: list[dict]) -> dict:
    import numpy as np
    ids = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, np.int32)
    lengths = np.concatenate([np.diff(p["offsets"]) for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"ids": ids, "offsets": offsets, "names": [n for p in parts for n in p["names"]],
            "starts": [s for p in parts for s in p["starts"]], "ends": [e for p in parts for e in p["ends"]]}


def run(args) -> int:
    from omicskern.errors import InvalidSequenceError
    from omicskern.io.fasta import FastaFile

    fasta = Path(args.fasta) if args.fasta else default_fasta()
    if args.window is not None and args.window <= 0:
        print("omicskern tokenize: error: --window must be positive", file=sys.stderr)
        return 2
    if args.stride is not None and (args.stride <= 0 or args.window is None):
        print("omicskern tokenize: error: --stride needs --window and must be positive", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    try:
        tok = make_tokenizer(args)
        fa = FastaFile(fasta)
    except (FileNotFoundError, ValueError, ImportError, OSError) as e:
        print(f"omicskern tokenize: error: {e}", file=sys.stderr)
        return 2
    names = args.records or fa.names
    missing = [n for n in names if n not in fa.names]
    if missing:
        print(f"omicskern tokenize: error: records not in {fasta}: {', '.join(missing)}", file=sys.stderr)
        return 2
    config = _config(args, fasta)
    lengths = dict(zip(fa.names, fa.lengths))

    out = Path(args.out) if args.out else None
    sharded = out is not None and out.suffix != ".npz"
    manifest = None
    todo = list(range(len(names)))
    if sharded:
        try:
            manifest, todo = _open_manifest(out, config, names, lengths, args.overwrite)
        except (ValueError, OSError) as e:
            print(f"omicskern tokenize: error: {e}", file=sys.stderr)
            return 2
    skipped = len(names) - len(todo)
    todo_bases = sum(lengths[names[i]] for i in todo)

    from tqdm import tqdm
    bar = tqdm(total=todo_bases, unit="bp", unit_scale=True, desc="tokenize", file=sys.stderr,
               disable=args.quiet or todo_bases < 2_000_000)
    tok.encode_batch(["ACGT"], padding=False)  # loads the C++ core: not part of the timing
    stats = _Stats()
    parts = []
    try:
        for i in todo:
            name = names[i]
            rows = _tokenize_record(tok, fa, name, args, stats, bar)
            if sharded:
                entry = manifest["records"][i]
                _save_npz(out / entry["shard"], rows, {**config, "record": name})
                entry.update(done=True, rows=len(rows["names"]), tokens=int(rows["ids"].size))
                manifest["complete"] = all(r["done"] for r in manifest["records"])
                _save_json(out / "manifest.json", manifest)
            elif out is not None:
                parts.append(rows)
    except InvalidSequenceError as e:
        bar.close()
        print(f"omicskern tokenize: error: {e}", file=sys.stderr)
        print("  (use --on-invalid unk or --on-invalid n to map such bytes instead)", file=sys.stderr)
        return 1
    finally:
        bar.close()
        fa.close()
    if out is not None and not sharded:
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_npz(out, _merge(parts), config)

    wall = time.perf_counter() - t_start
    mbps = stats.bases / stats.encode_s / 1e6 if stats.encode_s > 0 else float("inf")
    desc = args.tokenizer + (f" (k={args.k}, {args.kmer_mode})" if args.tokenizer == "kmer" else "")
    from omicskern._native import load_C
    threads = args.threads if args.threads > 0 else load_C().hardware_threads()
    print(f"tokenized {stats.records} record(s), {stats.rows} row(s) from {fasta}")
    if skipped:
        print(f"  skipped {skipped} record(s) already done in {out}")
    print(f"  tokenizer: {desc}, vocabulary {tok.vocab_size}, threads {threads}"
          + (f", windows {args.window} / stride {args.stride or args.window}" if args.window else ""))
    print(f"  {stats.bases:,} bases -> {stats.tokens:,} tokens")
    took = f"{stats.encode_s * 1e3:.2f} ms" if stats.encode_s < 1 else f"{stats.encode_s:.2f} s"
    print(f"  tokenization {took} = {mbps:,.1f} Mbp/s; total {wall:.2f} s (incl. reading FASTA)")
    if out is not None:
        print(f"  wrote {out}" + (" (manifest.json + one shard per record)" if sharded else ""))
    else:
        print("  (no --out given: tokens not written)")
    return 0


def _open_manifest(out: Path, config: dict, names: list[str], lengths: dict, overwrite: bool):
    path = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory (use a .npz name for one file)")
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("format") == MANIFEST_FORMAT and old.get("config") == config:
            todo = [i for i, r in enumerate(old["records"]) if not (r["done"] and (out / r["shard"]).is_file())]
            return old, todo
        if not overwrite:
            raise ValueError(f"{out} holds the output of a different job (settings or input differ); "
                             "use --overwrite to replace it, or another --out")
        for r in old.get("records", []):
            (out / r["shard"]).unlink(missing_ok=True)
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty and has no manifest.json; use --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": MANIFEST_FORMAT, "config": config, "complete": False,
                "records": [{"name": n, "length": lengths[n], "shard": f"shard-{i:05d}.npz", "done": False}
                            for i, n in enumerate(names)]}
    _save_json(path, manifest)
    return manifest, list(range(len(names)))
