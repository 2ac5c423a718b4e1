"""Tokenizing jobs: a FASTA genome -> token ids (one file, or a resumable sharded folder split by
rank), and an ``.h5ad`` -> cell tokens. The CLI (``omicskern tokenize``, ``tokenize-cells``)
parses arguments and calls these; the job mechanics are :mod:`omicskern.pipelines.jobs`.

Token files (``.npz``, the same keys for the single file and for every shard): ``ids`` int32
[T] (all rows back to back), ``offsets`` int64 [R+1] (row ``r`` is ``ids[offsets[r]:offsets[r+1]]``),
``names`` str [R], ``starts``/``ends`` int64 [R] (0-based half-open base range of each row in its
record), ``meta`` (JSON: settings, input, job key) and ``omicskern_job`` (the job). Files are
written without timestamps, so two runs of one job give byte-identical files.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from omicskern.pipelines.jobs import (JOB_MEMBER, MANIFEST_FORMAT, JobKey, ShardedJob, atomic_write, check_output,
                                      digest, record_job, remove_stale_temps)
from omicskern.pipelines.units import WorkUnit, fasta_units, split_by_rank

__all__ = ["tokenize_fasta", "tokenize_cells", "TokenizeResult", "CellsResult", "fasta_fingerprint",
           "tokenizer_identity", "file_digest", "write_npz"]

_LOWER = re.compile(rb"[a-z]")


# -- fingerprints ----------------------------------------------------------------------------------
def fasta_fingerprint(fa, names: Sequence[str]) -> tuple[dict, bool]:
    """(fingerprint, has_lower_case) of records ``names`` of an open :class:`~omicskern.io.fasta.FastaFile`.

    The fingerprint hashes what the tokens depend on: record names, lengths and every sequence
    byte (case included, line breaks and the file's compression not). All bytes rather than a
    sample, because one changed base must change the key; it costs one read of the genome
    (measured: 0.24 s for P. falciparum's 23 Mbp BGZF and 0.23 s for E. coli's 4.6 Mbp BGZF,
    dominated by pyfaidx's reading, the blake2b part is ~1 GB/s), small beside tokenizing it.
    Paths, file times and the ``.fai`` are left out, so a moved or re-compressed file resumes.
    """
    h = hashlib.blake2b(digest_size=16)
    bases = 0
    lower = False
    for name in names:
        data = fa.sequence(name).encode("utf-8", "surrogateescape")
        bases += len(data)
        lower = lower or _LOWER.search(data) is not None
        h.update(f"{name}\0{len(data)}\0".encode("utf-8", "surrogateescape"))
        h.update(data)
        h.update(b"\n")
    return {"type": "fasta", "records": len(names), "bases": bases, "blake2b": h.hexdigest()}, lower


def file_digest(path: str | os.PathLike, size: int = 16) -> str:
    """blake2b of a file's bytes, streamed."""
    h = hashlib.blake2b(digest_size=size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_IGNORED_ATTRS = {"num_threads", "algorithm", "padding_side", "truncation_side"}


def tokenizer_identity(tok) -> dict:
    """What makes a tokenizer's ids: its class, plain settings (k, mode, case, on_invalid...), its
    special tokens and a hash of its vocabulary, or of its whole ``tokenizer.json`` when it has
    one (BPE merges matter too). Never the path it was loaded from."""
    attrs = {k: v for k, v in sorted(vars(tok).items())
             if not k.startswith("_") and k not in _IGNORED_ATTRS and isinstance(v, (str, int, float, bool, type(None)))}
    ident = {"class": f"{type(tok).__module__}.{type(tok).__qualname__}", "attrs": attrs,
             "prefix_ids": list(getattr(tok, "prefix_ids", ())), "suffix_ids": list(getattr(tok, "suffix_ids", ()))}
    if hasattr(tok, "to_json_str"):
        ident["tokenizer_json"] = digest(tok.to_json_str(indent=None).encode())
    elif hasattr(tok, "get_vocab"):
        ident["vocab"] = digest(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    return ident


def _state(v):
    """A JSON-able, content-exact stand-in for a tokenizer attribute (arrays by hash)."""
    import numpy as np

    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return {"ndarray": hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest(), "dtype": str(a.dtype),
                "shape": list(a.shape)}
    if isinstance(v, dict):
        return [[str(k), _state(x)] for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))]
    if isinstance(v, (list, tuple)):
        return [_state(x) for x in v]
    if isinstance(v, (str, int, float, bool, type(None))):
        return v
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return f"<{type(v).__qualname__}>"


def cell_tokenizer_identity(tok) -> dict:
    """What makes a cell tokenizer's output: its class and every public and private setting and
    table (token dictionary, medians, bins...) by content; threads and chunk size excluded."""
    skip = _IGNORED_ATTRS | {"chunk_size"}
    state = {k: _state(v) for k, v in sorted(vars(tok).items()) if k not in skip}
    return {"class": f"{type(tok).__module__}.{type(tok).__qualname__}", "state": digest(state)}


def _vocab_has_lower(tok) -> bool:
    special = getattr(tok, "special_ids", frozenset())
    for t, i in tok.get_vocab().items():
        if i in special or (t.startswith("[") and t.endswith("]")) or (t.startswith("<") and t.endswith(">")):
            continue
        if any(c.islower() for c in t):
            return True
    return False


def _unk_id(tok) -> int | None:
    u = getattr(tok, "unk_token_id", None)
    if u is None and hasattr(tok, "token_to_id"):
        u = tok.token_to_id("[UNK]")
    return u


# -- npz without timestamps ------------------------------------------------------------------------
def _reemit(caught: list) -> bool:
    """Warnings of the tokenizer, caught batch by batch, re-raised once per kind (numbers do not
    count) with how often they came; True when one of them was about [UNK]."""
    kinds: dict = {}
    for w in caught:
        k = (w.category, re.sub(r"[\d,.%]+", "#", str(w.message)))
        first, n = kinds.get(k, (w, 0))
        kinds[k] = (first, n + 1)
    for (cat, _), (w, n) in kinds.items():
        warnings.warn(f"{w.message}" + (f" (and {n - 1} more such warnings)" if n > 1 else ""), cat, stacklevel=3)
    return any("[UNK]" in str(w.message) for w, _ in kinds.values())


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez`` with fixed member times (byte-reproducible output)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def _rows_arrays(rows: dict, meta: dict, key: JobKey) -> dict:
    record = json.dumps({"format": MANIFEST_FORMAT, "job_key": key.hexdigest, "job": key.to_dict()})
    return {"ids": rows["ids"], "offsets": rows["offsets"], "names": np.array(rows["names"], dtype=str),
            "starts": np.asarray(rows["starts"], dtype=np.int64), "ends": np.asarray(rows["ends"], dtype=np.int64),
            "meta": np.array(json.dumps(meta)), JOB_MEMBER: np.array(record)}


# -- results ---------------------------------------------------------------------------------------
@dataclass
class TokenizeResult:
    """What :func:`tokenize_fasta` did. ``out`` is None when nothing was written."""

    fasta: Path
    out: Path | None
    sharded: bool
    job_key: str
    units_total: int = 0
    units_done: int = 0          # by this call
    units_skipped: int = 0       # already done (resume)
    records: int = 0
    rows: int = 0
    bases: int = 0
    tokens: int = 0
    unk_tokens: int = 0
    encode_s: float = 0.0
    wall_s: float = 0.0
    uppercased: bool = False
    complete: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def mbps(self) -> float:
        return self.bases / self.encode_s / 1e6 if self.encode_s > 0 else float("inf")


def _encode_unit(tok, fa, unit: WorkUnit, window: int | None, stride: int | None, add: bool,
                 res: TokenizeResult, bar, data_cache: dict) -> dict:
    """All rows of one unit: windows ``[unit.start, unit.stop)`` of its record, or every window of
    each of its records (a grouped unit), encoded in batches of up to 16 Mbp."""
    from omicskern.errors import InvalidSequenceError
    from omicskern.io.fasta import window_starts

    views: list[memoryview] = []
    row_names: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for name in unit.names:
        if data_cache.get("name") != name:
            data_cache.update(name=name, data=fa.sequence(name).encode("utf-8", "surrogateescape"))
        data = data_cache["data"]
        n = len(data)
        if window:
            st = window_starts(n, window, stride or window)
            if not unit.records:
                st = st[unit.start:unit.stop]
            en = [min(s + window, n) for s in st]
        else:
            st, en = [0], [n]
        view = memoryview(data)
        views.extend(view[s:e] for s, e in zip(st, en))
        row_names.extend([name] * len(st))
        starts.extend(st)
        ends.extend(en)
    batch_bases = 1 << 24  # bounds the window copies held at once
    id_parts, len_parts = [], []
    i = 0
    while i < len(starts):
        j, size = i, 0
        while j < len(starts) and (j == i or size + ends[j] - starts[j] <= batch_bases):
            size += ends[j] - starts[j]
            j += 1
        t0 = time.perf_counter()
        try:
            batch = tok.encode_batch(views[i:j], padding=False, add_special_tokens=add)
        except InvalidSequenceError as e:
            row = i + (e.index or 0)
            pos = starts[row] + (e.position or 0)
            detail = str(e).split(": ", 1)[-1]
            raise InvalidSequenceError(f"record {row_names[row]!r}, position {pos} (0-based): {detail}",
                                       index=e.index, position=pos, byte=e.byte, name=row_names[row]) from None
        res.encode_s += time.perf_counter() - t0
        id_parts.append(np.asarray(batch.input_ids))
        len_parts.append(np.diff(np.asarray(batch.cu_seqlens)))
        res.bases += size
        if bar is not None:
            bar.update(size)
        i = j
    ids = np.concatenate(id_parts).astype(np.int32, copy=False) if id_parts else np.zeros(0, np.int32)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    res.rows += len(starts)
    res.tokens += int(ids.size)
    return {"ids": ids, "offsets": offsets, "names": row_names, "starts": starts, "ends": ends}


def _merge(parts: list[dict]) -> dict:
    ids = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, np.int32)
    lengths = np.concatenate([np.diff(p["offsets"]) for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"ids": ids, "offsets": offsets, "names": [n for p in parts for n in p["names"]],
            "starts": [s for p in parts for s in p["starts"]], "ends": [e for p in parts for e in p["ends"]]}


def _check_window(window, stride):
    if window is not None and window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if stride is not None and (stride <= 0 or window is None):
        raise ValueError("stride needs window and must be positive")


def tokenize_fasta(fasta: str | os.PathLike, tokenizer, *, out: str | os.PathLike | None = None,
                   window: int | None = None, stride: int | None = None, records: Sequence[str] | None = None,
                   add_special_tokens: bool = True, keep_case: bool = False, overwrite: bool = False,
                   rank: int = 0, world_size: int = 1, max_unit_bases: int | None = None,
                   describe: dict | None = None, sink: Callable[[dict], None] | None = None,
                   progress: bool = False, on_note: Callable[[str], None] | None = None) -> TokenizeResult:
    """Tokenizes the records of ``fasta`` (whole, or in windows of ``window`` bases every
    ``stride``) with ``tokenizer`` (any DNA tokenizer with ``encode_batch``).

    Output ``out``: None (nothing written; ``sink`` still gets every unit's rows), a ``.npz``
    file, or a folder: one shard per work unit + ``manifest.json``, resumable, and split over
    ``world_size`` ranks (this call does rank ``rank``'s units). The job is keyed on the input's
    content, the tokenizer's identity and the settings (:mod:`omicskern.pipelines.jobs`): an
    output of another job raises :class:`~omicskern.pipelines.jobs.JobMismatchError` unless
    ``overwrite``.

    Case: a tokenizer that can upper-case (``uppercase`` attribute, e.g. BPE) but whose
    vocabulary has no lower-case token would map soft-masked (lower-case) bases to [UNK]; such
    input is upper-cased (reported through ``on_note``) unless ``keep_case``. Results that are
    mostly [UNK] raise a warning. ``describe`` (plain settings, e.g. the CLI's) goes into the
    files' ``meta``.
    """
    from omicskern.io.fasta import FastaFile

    t_start = time.perf_counter()
    note = on_note or (lambda msg: None)
    _check_window(window, stride)
    fasta = Path(fasta)
    out = Path(out) if out is not None else None
    sharded = out is not None and out.suffix.lower() != ".npz"
    if world_size != 1 and not sharded:
        raise ValueError("rank/world_size need a sharded (folder) output")
    split_by_rank([], rank, world_size)  # checks rank / world_size
    if records is not None and len(set(records)) != len(records):
        dup = next(n for i, n in enumerate(records) if n in records[:i])
        raise ValueError(f"records: {dup!r} given more than once")
    if out is not None:
        from omicskern.io.writers import check_writable

        check_writable(out)  # before any work, not after the whole genome is tokenized
    with FastaFile(fasta) as fa:
        names = list(records) if records else list(fa.names)
        known = set(fa.names)  # a set: a list test per record made 300k records take minutes
        missing = [n for n in names if n not in known] if records else []
        if missing:
            raise KeyError(f"records not in {fasta}: {', '.join(missing)}")
        lengths = dict(zip(fa.names, fa.lengths))
        fingerprint, has_lower = fasta_fingerprint(fa, names)
        tok = tokenizer
        uppercased = False
        if (not keep_case and has_lower and getattr(tok, "uppercase", None) is False and hasattr(tok, "get_vocab")
                and not _vocab_has_lower(tok)):
            tok = copy.copy(tok)
            tok.uppercase = True
            uppercased = True
            note("the input has lower-case (soft-masked) bases and the vocabulary has no lower-case tokens: "
                 "upper-casing them (keep_case=True to keep them, they would become [UNK])")
        settings = {"window": window, "stride": (stride or window) if window else None,
                    "records": names if records else None, "add_special_tokens": bool(add_special_tokens)}
        if sharded:
            settings["max_unit_bases"] = max_unit_bases
            if max_unit_bases:  # short records are packed into units of ~max_unit_bases (layout 2)
                settings["unit_layout"] = 2
        key = JobKey("tokenize-fasta", fingerprint, tokenizer_identity(tok), settings)
        # a single file: units only batch the work (the output does not depend on them), so pack
        # short records into big units (one encode_batch call per ~4 Mbp, not per record)
        group = (max_unit_bases if sharded else 1 << 22) or None
        units = fasta_units(names, [lengths[n] for n in names], window, stride,
                            max_unit_bases if sharded else None, group_bases=group)
        config = {**(describe or {}), "input": fingerprint, "window": window,
                  "stride": stride, "records": list(records) if records else None, "uppercased": uppercased}
        if describe and "tokenizer" in describe:
            config["tokenizer"] = describe["tokenizer"]
        try:
            from omicskern import __version__
            config["omicskern"] = __version__
        except ImportError:  # pragma: no cover
            pass
        res = TokenizeResult(fasta, out, sharded, key.hexdigest, units_total=len(units), uppercased=uppercased)
        job = None
        if sharded:
            job = ShardedJob(out, key, units, config=config, units_field="records").open(overwrite=overwrite)
            todo = job.pending(rank, world_size)
            res.units_skipped = len(split_by_rank(units, rank, world_size)) - len(todo)
        else:
            if out is not None:
                check_output(out, key, overwrite=overwrite)
            todo = units
        todo_bases = sum(u.size for u in todo)
        bar = None
        if progress and todo_bases >= 2_000_000:
            from tqdm import tqdm
            bar = tqdm(total=todo_bases, unit="bp", unit_scale=True, desc="tokenize", file=__import__("sys").stderr)
        tok.encode_batch(["ACGT"], padding=False)  # loads the C++ core: not part of the timing
        unk = _unk_id(tok)
        parts: list[dict] = []
        cache: dict = {}
        seen = set()
        caught: list = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for u in todo:
                    rows = _encode_unit(tok, fa, u, window, stride, add_special_tokens, res, bar, cache)
                    for rec_name in u.names:
                        if rec_name not in seen:
                            seen.add(rec_name)
                            res.records += 1
                    if unk is not None:
                        res.unk_tokens += int(np.count_nonzero(rows["ids"] == unk))
                    if sink is not None:
                        sink(rows)
                    if job is not None:
                        meta = {**config, "record": u.name, "unit": [u.start, u.stop], "job_key": key.hexdigest}
                        if u.records:
                            meta["records"] = [u.records[0], u.records[-1], len(u.records)]
                        arrays = _rows_arrays(rows, meta, key)
                        job.write_shard(u, lambda tmp, a=arrays: write_npz(tmp, a), rows=len(rows["names"]),
                                        tokens=int(rows["ids"].size))
                    elif out is not None:
                        parts.append(rows)
                    res.units_done += 1
        finally:
            if bar is not None:
                bar.close()
            if job is not None:
                job.finish()
    if out is not None and not sharded:
        arrays = _rows_arrays(_merge(parts), {**config, "job_key": key.hexdigest}, key)
        remove_stale_temps(out.parent if str(out.parent) else Path("."), name=out.name)  # killed runs' leftovers
        atomic_write(out, lambda tmp: write_npz(tmp, arrays))
    if job is not None:
        res.complete = job.complete
    library_unk = _reemit(caught)
    specials = res.rows * (len(getattr(tok, "prefix_ids", ())) + len(getattr(tok, "suffix_ids", ()))) \
        if add_special_tokens else 0
    content = max(res.tokens - specials, 0)
    if content and res.unk_tokens > 0.5 * content and not library_unk:
        msg = (f"{res.unk_tokens / content:.2%} of the tokens are [UNK]: the vocabulary does not fit this input"
               + ("" if uppercased or not has_lower else " (it has lower-case bases; try without keep_case)"))
        res.notes.append(msg)
        warnings.warn(msg, stacklevel=2)
    res.wall_s = time.perf_counter() - t_start
    return res


# -- cells -----------------------------------------------------------------------------------------
@dataclass
class CellsResult:
    out: Path
    fmt: str
    job_key: str
    cells: int = 0
    tokens: int = 0
    report: object = None
    reused: bool = False   # the output already held this job's result: nothing recomputed


def tokenize_cells(input: str | os.PathLike, tokenizer, out: str | os.PathLike, *, fmt: str | None = None,
                   layer: str | None = None, overwrite: bool = False, identity: dict | None = None,
                   settings: dict | None = None, progress: bool = False) -> CellsResult:
    """Tokenizes every cell of ``input`` (``.h5ad``, read backed in chunks) with a cell tokenizer
    (rank value, binned value) and writes ``out`` (``.npz``, ``.parquet`` or a ``datasets``
    folder) atomically, with its job recorded in it. Keyed on the input file's bytes (a cell
    matrix has no cheaper exact fingerprint; a re-saved identical h5ad counts as another input:
    refused, never wrongly reused), ``identity`` (what the tokenizer was built from, e.g. hashes
    of its dictionary files) and ``settings``. Rerunning a finished job does nothing."""
    from omicskern.io.writers import check_writable

    input, out = Path(input), Path(out)
    fmt = fmt or _infer_format(out)
    check_writable(out)  # before any work
    key = JobKey("tokenize-cells", {"type": "file", "bytes": input.stat().st_size, "blake2b": file_digest(input)},
                 identity or cell_tokenizer_identity(tokenizer),
                 {**(settings or {}), "layer": layer, "format": fmt})
    if check_output(out, key, overwrite=overwrite):
        return CellsResult(out, fmt, key.hexdigest, reused=True)
    result = tokenizer.tokenize(str(input), layer=layer, progress=progress)
    def write(tmp: Path) -> None:
        result.save(tmp, fmt)
        record_job(tmp, key, fmt)

    remove_stale_temps(out.parent, name=out.name)  # leftovers of killed runs
    atomic_write(out, write)
    return CellsResult(out, fmt, key.hexdigest, cells=len(result), tokens=int(len(result.input_ids)),
                       report=getattr(result, "report", None))


def _infer_format(path: Path) -> str:
    s = str(path).lower()
    if s.endswith(".npz"):
        return "npz"
    if s.endswith((".parquet", ".pq")):
        return "parquet"
    return "dataset"
