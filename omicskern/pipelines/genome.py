"""Whole-genome embedding: FASTA -> windows -> tokens -> model -> a Zarr (or npy) store.

:func:`embed_genome` is the job behind ``omicskern embed-genome``:

1. **Windows.** Every record (or every BED region) is cut into windows of ``window`` bases every
   ``stride`` (:func:`~omicskern.io.fasta.window_starts`: the last window of a record may be
   shorter; a record shorter than the window is one short window; an empty record has none).
   Windows are numbered in genome order; that number is the row of every output array.
2. **Input thread.** A :class:`~omicskern.pipelines.engine.Prefetcher` extracts the windows of
   the next shards, counts their N, applies the N policy and tokenizes them with the C++
   tokenizers (reverse complement too with ``rc``), ahead of the model.
3. **Model.** :func:`~omicskern.pipelines.engine.embed_rows`: length-sorted token-budget groups
   (``batch_tokens``), ragged for attention models, padded only to the group's longest row for
   HyenaDNA; inference mode; ``dtype`` (bf16/fp16 on GPU).
4. **Output.** Shards of ``shard_windows`` windows, each a whole number of chunks of every
   per-window array, so each chunk has one writer; a shard writes its rows, then its small
   record in ``.omicskern-job/`` (the done marker, with its variable-size data: per-token states,
   track partial sums), atomically. Rank 0 assembles the variable-size arrays and the attributes
   once every shard is there and marks the store ``complete``.

A killed job rerun with the same command redoes only the shards that were not recorded and gives
the same arrays as an uninterrupted run. The job is keyed on the genome's content, the model's
config and weights, the tokenizer and the settings (not on paths): another job into the same
store is refused unless ``overwrite``. Under ``torchrun`` every rank takes its share of shards
(:func:`~omicskern.pipelines.units.split_by_rank`), and the result equals a one-process run.

Example:
    >>> res = embed_genome("lambda.fa", "builtin", "lambda.zarr")   # doctest: +SKIP
    >>> res.store.region("gi|9626243|ref|NC_001416.1|:1-5,000").embeddings.shape
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from omicskern.errors import InvalidSequenceError, JobMismatchError
from omicskern.pipelines.distributed import Ranks
from omicskern.pipelines.engine import Clock, Prefetcher, configure_threads, embed_rows
from omicskern.pipelines.jobs import JobKey, ShardedJob, digest
from omicskern.pipelines.units import WorkUnit, split_by_rank

__all__ = ["embed_genome", "EmbedGenomeResult", "NPolicy", "default_window"]

_WORK = ".omicskern-job"
_FMT = "omicskern.genome-embeddings/1"
POOLINGS = ("mean", "cls", "last", "max", "none")
RC_MODES = ("none", "average", "concat")
_COMP = bytes.maketrans(b"ACGTRYKMBDHVNacgtrykmbdhvn", b"TGCAYRMKVHDBNtgcayrmkvhdbn")


@dataclass(frozen=True)
class NPolicy:
    """What to do with windows holding N: ``skip`` those whose N fraction is above ``max_frac``
    (their rows are NaN, status ``n_fraction``), or ``keep`` all. Parsed from ``"keep"``,
    ``"skip"`` (= ``skip:0.5``) or ``"skip:0.1"``."""

    mode: str = "skip"
    max_frac: float = 0.5

    @classmethod
    def parse(cls, text: "str | NPolicy") -> "NPolicy":
        if isinstance(text, NPolicy):
            return text
        t = str(text).strip().lower()
        if t == "keep":
            return cls("keep", 1.0)
        if t == "skip":
            return cls()
        if t.startswith("skip:"):
            try:
                f = float(t[5:])
            except ValueError:
                f = -1.0
            if 0.0 <= f < 1.0:
                return cls("skip", f)
        raise ValueError(f"n_policy={text!r}: expected 'keep', 'skip' or 'skip:F' with 0 <= F < 1 "
                         "(skip windows whose fraction of N is above F)")

    def __str__(self) -> str:
        return "keep" if self.mode == "keep" else f"skip:{self.max_frac:g}"


@dataclass
class EmbedGenomeResult:
    """What :func:`embed_genome` did (this rank's part, plus the store when it is complete)."""

    out: Path
    complete: bool = False
    records: int = 0
    windows: int = 0
    windows_done: int = 0
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    bases: int = 0
    tokens: int = 0
    skipped: dict = field(default_factory=dict)
    wall_s: float = 0.0
    input_wait_s: float = 0.0
    model_s: float = 0.0
    input_s: float = 0.0
    rank: int = 0
    world_size: int = 1
    notes: list = field(default_factory=list)
    window: int = 0
    stride: int = 0

    @property
    def store(self):
        from omicskern.io.genome_store import GenomeEmbeddings

        return GenomeEmbeddings(self.out)

    @property
    def bp_per_s(self) -> float:
        return self.bases / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> str:
        skipped = ", ".join(f"{v:,} {k}" for k, v in sorted(self.skipped.items()) if v) or "none"
        lines = [
            f"{self.out}: {'complete' if self.complete else 'incomplete'}; {self.records:,} records, "
            f"{self.windows:,} windows of {self.window:,} bp every {self.stride:,} bp",
            f"this run{'' if self.world_size == 1 else f' (rank {self.rank} of {self.world_size})'}: "
            f"{self.shards_done} shards embedded, {self.shards_skipped} already done; {self.windows_done:,} windows, "
            f"{self.bases:,} bp, {self.tokens:,} tokens; skipped: {skipped}",
            f"wall {self.wall_s:.1f} s, {self.bp_per_s / 1e3:,.1f} kbp/s; model {self.model_s:.1f} s, "
            f"input {self.input_s:.1f} s in the background of which the model waited {self.input_wait_s:.1f} s"
            + (" (input-bound: raise --threads or use a faster disk)" if self.input_wait_s > 0.2 * max(self.wall_s, 1e-9)
               and self.wall_s > 5 else ""),
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# -- model / tokenizer --------------------------------------------------------------------------------
def _bases_per_token(tok) -> int:
    if getattr(tok, "mode", None) == "nt":
        return int(getattr(tok, "k", 1))
    return 1


def default_window(model, tok) -> int:
    """The bases one row of ``model.max_length`` tokens surely holds with ``tok``'s special tokens:
    ``(max_length - specials) * bases_per_token`` (1 for char, overlapping k-mers and BPE, whose
    tokens hold at least one base; ``k`` for NT's non-overlapping k-mers)."""
    specials = len(getattr(tok, "prefix_ids", ())) + len(getattr(tok, "suffix_ids", ()))
    return max(1, (int(model.max_length) - specials) * _bases_per_token(tok))


def model_identity(model) -> dict:
    """The model's class, config and a blake2b of every weight (names, shapes, dtypes and bytes);
    not its path."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    cfg = getattr(model, "config", None)
    try:
        from dataclasses import asdict
        cfg = asdict(cfg)
    except TypeError:
        cfg = getattr(cfg, "__dict__", str(cfg))
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}", "model_type": model.model_type,
            "config": digest(cfg), "weights": h.hexdigest()}


def _load_model(model, device, dtype):
    import torch

    from omicskern.models.base import OmicsModel

    if isinstance(model, OmicsModel):
        return model, (str(model.source_path) if model.source_path else None)
    from omicskern import load

    tdtype = None
    if dtype is not None:
        tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    m = load(model, device=device, dtype=tdtype)
    return m, str(getattr(m, "source_path", None) or model)


# -- windows ------------------------------------------------------------------------------------------
def read_bed(path, lengths: dict) -> list[tuple[str, int, int]]:
    """``(record, start, end)`` of every region of a BED file (0-based half-open, as BED is),
    checked against the FASTA's records; ``track``/``browser``/``#`` lines are ignored."""
    path = Path(path)
    out = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"BED {path} is not a text file") from None
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.split("\t") if "\t" in line else line.split()
        if len(f) < 3:
            raise ValueError(f"BED {path}, line {ln}: expected at least 3 columns (chrom, start, end), got {len(f)}")
        name = f[0]
        try:
            s, e = int(f[1]), int(f[2])
        except ValueError:
            raise ValueError(f"BED {path}, line {ln}: start/end {f[1]!r}, {f[2]!r} are not integers") from None
        if name not in lengths:
            known = list(lengths)
            raise KeyError(f"BED {path}, line {ln}: record {name!r} is not in the FASTA (records: "
                           f"{', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
        if not 0 <= s < e <= lengths[name]:
            raise ValueError(f"BED {path}, line {ln}: region {name}:{s}-{e} is not within [0, {lengths[name]}) "
                             "or is empty (BED is 0-based, half-open)")
        out.append((name, s, e))
    if not out:
        raise ValueError(f"BED {path} has no regions")
    return out


@dataclass
class _Layout:
    """The job's windows in genome order, and the segments (records or regions) they come from."""

    seg_record: list          # record name per segment
    seg_start: np.ndarray     # segment bounds in record coordinates
    seg_end: np.ndarray
    win_seg: np.ndarray       # segment index per window
    win_start: np.ndarray
    win_end: np.ndarray
    seg_offset: np.ndarray    # first window per segment [n_seg + 1]

    @property
    def n(self) -> int:
        return len(self.win_start)


def _layout(segments: Sequence[tuple[str, int, int]], window: int, stride: int) -> _Layout:
    from omicskern.io.fasta import window_starts

    ws, we, wseg, offs = [], [], [], [0]
    for i, (_, s, e) in enumerate(segments):
        st = np.asarray(window_starts(e - s, window, stride), dtype=np.int64) + s
        ws.append(st)
        we.append(np.minimum(st + window, e))
        wseg.append(np.full(len(st), i, np.int32))
        offs.append(offs[-1] + len(st))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return _Layout([r for r, _, _ in segments], np.array([s for _, s, _ in segments], np.int64),
                   np.array([e for _, _, e in segments], np.int64), cat(wseg, np.int32), cat(ws, np.int64),
                   cat(we, np.int64), np.asarray(offs, np.int64))


def _cut(m: float) -> int:
    """First base past the midpoint ``m`` of two window centres: base ``b`` (centre ``b + 0.5``)
    goes to the earlier window when ``b + 0.5 <= m``."""
    return math.floor(m - 0.5) + 1


def _owned(lay: _Layout, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Bases each window ``[lo, hi)`` owns for tracks: with overlapping windows a base belongs to
    the covering window whose centre is nearest (ties to the earlier), so every base of a segment
    is counted exactly once, from the window where it has the most context on both sides.
    Consecutive windows meet at one boundary inside their overlap (``stride <= window``)."""

    def boundary(w: int) -> int:  # between window w and w + 1 of one segment
        c0 = (lay.win_start[w] + lay.win_end[w]) / 2
        c1 = (lay.win_start[w + 1] + lay.win_end[w + 1]) / 2
        return int(min(max(_cut((c0 + c1) / 2), lay.win_start[w + 1]), lay.win_end[w]))

    own_lo = lay.win_start[lo:hi].copy()
    own_hi = lay.win_end[lo:hi].copy()
    for j, w in enumerate(range(lo, hi)):
        g = lay.win_seg[w]
        if w > lay.seg_offset[g]:
            own_lo[j] = boundary(w - 1)
        if w + 1 < lay.seg_offset[g + 1]:
            own_hi[j] = boundary(w)
    return own_lo, own_hi


def _base_states(states: np.ndarray, spans: np.ndarray, n_bases: int, reverse: bool) -> np.ndarray:
    """``[n_bases, C]``: each base gets the state of the last token that starts at or before it
    and covers it (one token for char, NT k-mers and BPE; the k-mer starting there for
    overlapping k-mers); bases no token covers stay NaN. Special tokens (empty spans) are left
    out. ``reverse``: the tokens are of the reverse complement, whose base ``j`` is forward base
    ``n_bases - 1 - j``."""
    real = spans[:, 1] > spans[:, 0]
    st, sp = states[real], spans[real]
    out = np.full((n_bases, states.shape[1]), np.nan, np.float32)
    if len(sp):
        pos = np.arange(n_bases)
        t = np.searchsorted(sp[:, 0], pos, side="right") - 1
        ok = (t >= 0) & (sp[np.maximum(t, 0), 1] > pos)
        out[ok] = st[t[ok]]
    return out[::-1] if reverse else out


# -- the job --------------------------------------------------------------------------------------------
def embed_genome(fasta, model, out, *, window: int | None = None, stride: int | None = None,
                 regions=None, pooling: str = "mean", layer: int | None = None, per_token: bool = False,
                 track_bin: int | None = None, rc: str = "none", n_policy: "str | NPolicy" = "skip",
                 batch_tokens: int = 16384, device: str | None = None, dtype: str | None = None,
                 out_dtype: str = "float16", threads: int | None = None, fmt: str | None = None,
                 shard_windows: int | None = None, overwrite: bool = False, keep_case: bool = False,
                 progress: bool = False, on_note: Callable[[str], None] | None = None,
                 ranks: Ranks | None = None) -> EmbedGenomeResult:
    """Embeds every window of a genome into a store (see :mod:`omicskern.io.genome_store`).

    Args:
        fasta: plain or BGZF FASTA (``.fai`` built when missing, in a cache if the folder is read-only).
        model: a checkpoint folder, ``"builtin"``, or a loaded :class:`~omicskern.models.base.OmicsModel`.
        out: ``OUT.zarr`` (Zarr v3) or, with ``fmt="npy"``, a folder of ``.npy`` files.
        window, stride: bases (default: :func:`default_window`, stride = window).
        regions: a BED file: embed only these regions (each cut into windows like a record).
        pooling: ``mean``, ``cls``, ``last``, ``max`` or ``none`` (no ``embeddings`` array; needs
            ``per_token`` or ``track_bin``).
        layer: hidden-state index (default: the model's).
        per_token: also store every token's state (ragged ``tokens/states``).
        track_bin: also store ``tracks``: per-base states averaged over bins of this many bases.
        rc: ``none``, ``average`` (mean of the forward and reverse-complement embeddings) or
            ``concat`` (``[forward, rc]``, 2C channels).
        n_policy: ``"skip"`` (windows over 50% N), ``"skip:F"`` or ``"keep"``; recorded either way.
        batch_tokens: token budget per model call; device/dtype: where and how the model runs
            (``dtype`` e.g. ``"bfloat16"`` on GPU; part of the job key, since it changes outputs).
        out_dtype: ``float16`` (default) or ``float32`` for the stored arrays.
        threads: torch threads (default: this process's cores).
        shard_windows: windows per shard (default: about 8 MB of embeddings, at least 64).
        overwrite: replace a store of another job.

    Returns:
        :class:`EmbedGenomeResult`; ``.store`` opens the result (:class:`~omicskern.io.genome_store.GenomeEmbeddings`).
    """
    import torch

    from omicskern.io.fasta import FastaFile
    from omicskern.io.genome_store import ArrayStore
    from omicskern.pipelines.tokenize import _vocab_has_lower, fasta_fingerprint, tokenizer_identity

    t_start = time.perf_counter()
    note = on_note or (lambda msg: None)
    ranks = ranks or Ranks.from_env()
    out = Path(out)
    fmt = fmt or ("npy" if out.suffix.lower() == ".npy" else "zarr")
    if fmt not in ("zarr", "npy"):
        raise ValueError(f"fmt must be 'zarr' or 'npy', got {fmt!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if rc not in RC_MODES:
        raise ValueError(f"rc must be one of {', '.join(RC_MODES)}, got {rc!r}")
    if pooling == "none" and not per_token and not track_bin:
        raise ValueError("pooling='none' stores no embeddings: ask for per_token=True or track_bin=N")
    if per_token and rc != "none":
        raise ValueError("per_token=True stores the forward strand's tokens only: use rc='none' (the tokens of "
                         "the two strands do not align one to one; track_bin=N averages both strands per base)")
    if track_bin is not None and track_bin < 1:
        raise ValueError(f"track_bin must be >= 1 base, got {track_bin}")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if out_dtype not in ("float16", "float32"):
        raise ValueError(f"out_dtype must be 'float16' or 'float32', got {out_dtype!r}")
    npol = NPolicy.parse(n_policy)
    from omicskern.io.writers import check_writable

    check_writable(out)
    dev = ranks.device(device)
    ranks.init(dev)
    try:
        res = _run(fasta, model, out, window, stride, regions, pooling, layer, per_token, track_bin, rc, npol,
                   batch_tokens, dev, dtype, out_dtype, threads, fmt, shard_windows, overwrite, keep_case,
                   progress, note, ranks, FastaFile, ArrayStore, fasta_fingerprint, tokenizer_identity,
                   _vocab_has_lower, torch, t_start)
    finally:
        ranks.close()
    return res


def _run(fasta, model, out, window, stride, regions, pooling, layer, per_token, track_bin, rc, npol,
         batch_tokens, dev, dtype, out_dtype, threads, fmt, shard_windows, overwrite, keep_case, progress, note,
         ranks, FastaFile, ArrayStore, fasta_fingerprint, tokenizer_identity, _vocab_has_lower, torch, t_start):
    configure_threads(threads)
    model, model_src = _load_model(model, dev, dtype)
    model.eval()
    tok = model.get_tokenizer()
    _check_pairing(model, tok)
    if getattr(tok, "num_threads", None) is not None:
        tok = copy.copy(tok)
        tok.num_threads = 1  # the input thread runs beside torch's threads; see engine.configure_threads
    fasta = Path(fasta)
    with FastaFile(fasta) as fa:
        if not fa.names:
            raise ValueError(f"FASTA {fasta} has no records: nothing to embed")
        lengths = dict(zip(fa.names, fa.lengths))
        if regions is not None:
            segments = read_bed(regions, lengths)
            rec_names = list(dict.fromkeys(r for r, _, _ in segments))
        else:
            segments = [(n, 0, lengths[n]) for n in fa.names]
            rec_names = list(fa.names)
        fingerprint, has_lower = fasta_fingerprint(fa, rec_names)
        if (not keep_case and has_lower and getattr(tok, "uppercase", None) is False and hasattr(tok, "get_vocab")
                and not _vocab_has_lower(tok)):
            tok = copy.copy(tok)
            tok.uppercase = True
            note("the genome has lower-case (soft-masked) bases and the vocabulary has no lower-case tokens: "
                 "upper-casing them (keep_case=True to keep them)")
        win = int(window) if window else default_window(model, tok)
        if win < 1:
            raise ValueError(f"window must be >= 1 base, got {window}")
        fit = default_window(model, tok)
        if win > fit and model.max_length_is_hard and not hasattr(tok, "to_json_str"):
            # char / k-mer: the token count of a window is known; BPE windows are checked as tokenized
            raise ValueError(f"window={win} bases takes more than this model's max_length={model.max_length} tokens "
                             f"with its tokenizer's special tokens: use window <= {fit}")
        st = int(stride) if stride else win
        if st < 1:
            raise ValueError(f"stride must be >= 1 base, got {stride}")
        if track_bin and st > win:
            raise ValueError(f"track_bin needs every base covered: stride ({st}) must be <= window ({win})")
        lay = _layout(segments, win, st)
        n_win = lay.n
        c = _channels(model, rc)
        row_bytes = c * (2 if out_dtype == "float16" else 4)
        sw = int(shard_windows) if shard_windows else max(64, (8 << 20) // max(row_bytes, 1))
        if sw < 1:
            raise ValueError(f"shard_windows must be >= 1, got {shard_windows}")
        units = [WorkUnit(i, "windows", a, min(a + sw, n_win), int((lay.win_end[a:a + sw] - lay.win_start[a:a + sw]).sum()))
                 for i, a in enumerate(range(0, n_win, sw))]
        settings = {"window": win, "stride": st, "regions": digest(segments) if regions is not None else None,
                    "pooling": pooling, "layer": layer, "per_token": bool(per_token), "track_bin": track_bin,
                    "rc": rc, "n_policy": str(npol), "dtype": str(dtype) if dtype else None, "out_dtype": out_dtype,
                    "shard_windows": sw, "format": fmt}
        key = JobKey("embed-genome", fingerprint, {"model": model_identity(model), "tokenizer": tokenizer_identity(tok)},
                     settings)
        work = out / _WORK
        res = EmbedGenomeResult(out, records=len(rec_names), windows=n_win, shards_total=len(units),
                                rank=ranks.rank, world_size=ranks.world_size, window=win, stride=st)
        res.skipped = {"n_fraction": 0, "empty_record": sum(1 for r in rec_names if lengths[r] == 0)}
        fa_info = {"name": fasta.name, "bytes": fasta.stat().st_size,
                   "index_blake2b": _file_digest(fa.index_path) if Path(fa.index_path).is_file() else None}
        from omicskern import __version__

        attrs = {"format": _FMT, "omicskern": __version__, "complete": False,
                 "omicskern_job": {"key": key.hexdigest, **key.to_dict()},
                 "model": {"path": model_src, **key.producer["model"], "max_length": int(model.max_length),
                           "kind": model.kind},
                 "tokenizer": {"class": type(tok).__name__, **key.producer["tokenizer"]},
                 "fasta": fa_info, "window": win, "stride": st, "n_policy": str(npol), "rc": rc,
                 "pooling": pooling, "layer": layer if layer is not None else int(model.default_layer),
                 "channels": c, "dtype": out_dtype,
                 "records": _records_table(lay, rec_names, lengths, track_bin)}
        err = None
        if ranks.is_main:
            try:
                _prepare_store(out, work, key, attrs, lay, c, sw, pooling, out_dtype, fmt, overwrite)
            except BaseException as e:  # raised below, after telling the other ranks
                err = e
        if not ranks.all_ok(err is None):
            if err is not None:
                raise err
            raise RuntimeError("rank 0 failed while preparing the store; see its error")
        store = ArrayStore(out, fmt)
        if store.attrs.get("complete"):  # this job's store (checked above), finished
            if ranks.is_main and work.exists():
                shutil.rmtree(work, ignore_errors=True)  # a kill between completion and cleanup
            res.complete = True
            res.shards_skipped = len(split_by_rank(units, ranks.rank, ranks.world_size))
            res.wall_s = time.perf_counter() - t_start
            return res
        job = ShardedJob(work, key, units, config=settings).open(overwrite=False)
        todo = job.pending(ranks.rank, ranks.world_size)
        res.shards_skipped = len(split_by_rank(units, ranks.rank, ranks.world_size)) - len(todo)
        err = None
        try:
            _embed_units(todo, fa, tok, model, lay, store, job, res, pooling, layer, per_token, track_bin, rc, npol,
                         batch_tokens, out_dtype, progress)
        except BaseException as e:  # raised below, after telling the other ranks
            err = e
        finally:
            job.finish()
        if not ranks.all_ok(err is None):
            if err is not None:
                raise err
            raise RuntimeError("another rank failed; rerun the same command to resume (done shards are kept)")
        ranks.barrier()
        if ranks.is_main:
            job = ShardedJob(work, key, units, config=settings).open(overwrite=False)
            if not job.complete:  # pragma: no cover - every rank finished without error
                raise RuntimeError(f"{out}: shards missing after every rank finished; rerun to resume")
            _finalize(store, job, units, lay, attrs, per_token, track_bin, c, out_dtype, res)
        ranks.barrier()
        res.complete = bool(ArrayStore(out, fmt).attrs.get("complete"))
    res.wall_s = time.perf_counter() - t_start
    return res


def _check_pairing(model, tok) -> None:
    """The tokenizer's ids must index the model's embedding (a checkpoint folder with another
    model's tokenizer file would otherwise fail deep inside the model, or embed garbage)."""
    from omicskern.errors import CheckpointError

    vocab = getattr(model, "_vocab_size", None)
    n_model = int(vocab()) if callable(vocab) else None
    n_tok = getattr(tok, "vocab_size", None)
    if n_model is not None and n_tok is not None and int(n_tok) > n_model:
        where = f" in {model.source_path}" if getattr(model, "source_path", None) else ""
        raise CheckpointError(f"the tokenizer{where} ({type(tok).__name__}) has {int(n_tok):,} tokens but the model's "
                              f"embedding has {n_model:,} rows: the tokenizer file is not this model's")


def _channels(model, rc: str) -> int:
    c = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0) or 0)
    if not c:  # ask the model
        import torch

        from omicskern.batch import Batch
        tok = model.get_tokenizer()
        b = tok.encode_batch(["ACGT"], padding=False)
        assert isinstance(b, Batch)
        with torch.inference_mode():
            c = int(model.embed(b).pooled.shape[1])
    return 2 * c if rc == "concat" else c


def _file_digest(path) -> str:
    from omicskern.pipelines.tokenize import file_digest

    return file_digest(path)


def _records_table(lay: _Layout, rec_names, lengths, track_bin) -> dict:
    """Per segment: name, length, window offset/count (and track bins). Regions of one record are
    separate segments; ``start``/``end`` give their bounds."""
    n_seg = len(lay.seg_record)
    tab = {"name": list(lay.seg_record), "length": [int(lengths[r]) for r in lay.seg_record],
           "start": lay.seg_start.tolist(), "end": lay.seg_end.tolist(),
           "window_offset": lay.seg_offset[:-1].tolist(), "n_windows": np.diff(lay.seg_offset).tolist()}
    if track_bin:
        nb = [int(-(-(int(lay.seg_end[i]) - int(lay.seg_start[i])) // track_bin)) for i in range(n_seg)]
        off = np.zeros(n_seg + 1, np.int64)
        np.cumsum(nb, out=off[1:])
        tab["n_bins"], tab["track_offset"] = nb, off[:-1].tolist()
    return tab


def _prepare_store(out: Path, work: Path, key: JobKey, attrs, lay, c, sw, pooling, out_dtype, fmt,
                   overwrite) -> None:
    """Rank 0: refuse another job's store, else create the per-window arrays once."""
    from omicskern.io.genome_store import ArrayStore as _AS

    ArrayStore = _AS

    existing = _AS.detect(out) if out.exists() else None
    if out.exists() and not out.is_dir():
        raise JobMismatchError(f"{out} exists and is not a folder")
    if existing:
        old = _AS(out, existing).attrs.get("omicskern_job", {})
        if old.get("key") == key.hexdigest and existing == fmt:
            return  # this job's store: resume
        if not overwrite:
            raise JobMismatchError(
                f"{out} holds another job's embeddings ({JobKey.from_dict(old).differences(key) if old else 'unknown job'}); "
                "use overwrite=True or another output path")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise JobMismatchError(f"{out} is not empty and is not an embedding store; use overwrite=True "
                                   "or another output path")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    store = ArrayStore(out, fmt)
    n = lay.n
    if pooling != "none":
        store.create("embeddings", (n, c), out_dtype, sw, fill=np.nan)
    store.create("windows/record", (n,), np.int32, max(sw, 1))
    store.create("windows/start", (n,), np.int64, max(sw, 1))
    store.create("windows/end", (n,), np.int64, max(sw, 1))
    store.create("windows/tokens", (n,), np.int32, max(sw, 1))
    store.create("windows/n_frac", (n,), np.float32, max(sw, 1))
    store.create("windows/status", (n,), np.uint8, max(sw, 1))
    store.set_attrs(attrs)  # last: a store with attributes has all its arrays


def _window_bytes(fa, lay: _Layout, unit: WorkUnit, cache: dict) -> list[bytes]:
    out = []
    for w in range(unit.start, unit.stop):
        rec = lay.seg_record[lay.win_seg[w]]
        if cache.get("name") != rec:
            cache.update(name=rec, data=fa.sequence(rec).encode("utf-8", "surrogateescape"))
        out.append(cache["data"][int(lay.win_start[w]):int(lay.win_end[w])])
    return out


def _tokenize(tok, seqs, spans: bool, lay, unit, rows):
    try:
        return tok.encode_batch(seqs, padding=False, return_token_spans=spans)
    except InvalidSequenceError as e:
        w = unit.start + rows[e.index or 0]
        rec = lay.seg_record[lay.win_seg[w]]
        pos = int(lay.win_start[w]) + (e.position or 0)
        detail = str(e).split(": ", 1)[-1]
        raise InvalidSequenceError(f"record {rec!r}, position {pos} (0-based): {detail}", index=e.index,
                                   position=pos, byte=e.byte, name=rec) from None


def _produce(units, fa, tok, lay: _Layout, npol: NPolicy, rc: str, spans: bool, max_len: int, hard: bool):
    """Input thread: per shard, the windows' bytes, N fractions, policy and tokens."""
    cache: dict = {}
    for u in units:
        seqs = _window_bytes(fa, lay, u, cache)
        n = len(seqs)
        nfrac = np.array([(s.count(b"N") + s.count(b"n")) / len(s) if s else 0.0 for s in seqs], np.float32)
        status = np.zeros(n, np.uint8)
        if npol.mode == "skip":
            status[nfrac > npol.max_frac] = 1
        rows = np.nonzero(status == 0)[0]
        keep = [seqs[i] for i in rows]
        fwd = _tokenize(tok, keep, spans, lay, u, rows) if len(rows) else None
        rev = None
        if rc != "none" and len(rows):
            rev = _tokenize(tok, [s.translate(_COMP)[::-1] for s in keep], spans, lay, u, rows)
        if fwd is not None and hard:
            lens = np.diff(np.asarray(fwd.cu_seqlens))
            if lens.max(initial=0) > max_len:
                j = int(np.argmax(lens))
                w = u.start + int(rows[j])
                rec = lay.seg_record[lay.win_seg[w]]
                raise ValueError(f"record {rec!r}, window {int(lay.win_start[w])}-{int(lay.win_end[w])}: "
                                 f"{int(lens[j])} tokens, more than the model's max_length={max_len}; "
                                 "use a smaller window (--window)")
        yield u, seqs, nfrac, status, rows, fwd, rev


def _embed_units(todo, fa, tok, model, lay, store, job, res, pooling, layer, per_token, track_bin, rc, npol,
                 batch_tokens, out_dtype, progress) -> None:
    clock = Clock()
    want_tokens = bool(per_token or track_bin)
    bar = None
    total_bp = sum(u.size for u in todo)
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=total_bp, unit="bp", unit_scale=True, desc="embed-genome", file=sys.stderr,
                   dynamic_ncols=True)
    sdt = np.float16 if out_dtype == "float16" else np.float32
    src = _produce(todo, fa, tok, lay, npol, rc, want_tokens, int(model.max_length), model.max_length_is_hard)
    t_wall0 = time.perf_counter()
    try:
        with Prefetcher(src, depth=2) as pre:
            for u, seqs, nfrac, status, rows, fwd, rev in pre:
                n = u.stop - u.start
                emb = None
                tok_counts = np.zeros(n, np.int32)
                extra: dict = {}
                if fwd is not None:
                    e_f = embed_rows(model, fwd, pooling=pooling, layer=layer, max_tokens=batch_tokens,
                                     per_token=want_tokens, clock=clock)
                    e_r = embed_rows(model, rev, pooling=pooling, layer=layer, max_tokens=batch_tokens,
                                     per_token=bool(track_bin), clock=clock) if rev is not None else None
                    tok_counts[rows] = np.diff(np.asarray(fwd.cu_seqlens)).astype(np.int32)
                    if pooling != "none":
                        p = e_f.pooled
                        if rc == "average":
                            p = (p + e_r.pooled) / 2
                        elif rc == "concat":
                            p = np.concatenate([p, e_r.pooled], axis=1)
                        emb = np.full((n, p.shape[1]), np.nan, np.float32)
                        emb[rows] = p
                    if per_token:
                        extra["token_states"] = e_f.tokens.astype(sdt)
                        extra["token_spans"] = np.asarray(fwd.token_spans, np.int32).reshape(-1, 2)
                    if track_bin:
                        extra.update(_track_partials(lay, u, rows, fwd, e_f, rev, e_r, track_bin, rc))
                elif pooling != "none":
                    emb = np.full((n, _emb_width(store)), np.nan, np.float32)
                if emb is not None:
                    store.write("embeddings", u.start, emb.astype(sdt))
                w = slice(u.start, u.stop)
                store.write("windows/record", u.start, _seg_to_record(lay, lay.win_seg[w]))
                store.write("windows/start", u.start, lay.win_start[w])
                store.write("windows/end", u.start, lay.win_end[w])
                store.write("windows/tokens", u.start, tok_counts)
                store.write("windows/n_frac", u.start, nfrac)
                store.write("windows/status", u.start, status)
                arrays = {"tokens": tok_counts, **extra}
                job.write_shard(u, lambda tmp, a=arrays: _savez(tmp, a), windows=n, tokens=int(tok_counts.sum()))
                res.shards_done += 1
                res.windows_done += n
                res.bases += u.size
                res.tokens += int(tok_counts.sum())
                res.skipped["n_fraction"] += int((status == 1).sum())
                if bar is not None:
                    el = max(time.perf_counter() - t_wall0, 1e-9)
                    bar.update(u.size)
                    bar.set_postfix_str(f"{res.windows_done / el:,.1f} windows/s", refresh=False)
            res.input_wait_s = pre.wait_s
            res.input_s = pre.produce_s
    finally:
        if bar is not None:
            bar.close()
    res.model_s = clock.get("model")


def _emb_width(store) -> int:
    return int(store.read("embeddings").shape[1])


def _seg_to_record(lay: _Layout, seg: np.ndarray) -> np.ndarray:
    """Windows' record column indexes the records table (= segments)."""
    return seg.astype(np.int32)


def _savez(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _track_partials(lay, u, rows, fwd, e_f, rev, e_r, bin_size, rc) -> dict:
    """Per shard, the sums and base counts per (segment, bin) of the bases its windows own."""
    own_lo, own_hi = _owned(lay, u.start, u.stop)
    cu_f = np.asarray(fwd.cu_seqlens, np.int64)
    sp_f = np.asarray(fwd.token_spans, np.int64).reshape(-1, 2)
    cu_r = sp_r = None
    if rev is not None:
        cu_r = np.asarray(rev.cu_seqlens, np.int64)
        sp_r = np.asarray(rev.token_spans, np.int64).reshape(-1, 2)
    seg_ids, bin_ids, sums, counts = [], [], [], []
    for j, r in enumerate(rows):
        w = u.start + int(r)
        s, e = int(lay.win_start[w]), int(lay.win_end[w])
        g = int(lay.win_seg[w])
        base = _base_states(e_f.tokens[cu_f[j]:cu_f[j + 1]], sp_f[cu_f[j]:cu_f[j + 1]], e - s, False)
        if rev is not None:
            rb = _base_states(e_r.tokens[cu_r[j]:cu_r[j + 1]], sp_r[cu_r[j]:cu_r[j + 1]], e - s, True)
            base = np.concatenate([base, rb], axis=1) if rc == "concat" else (base + rb) / 2
        lo, hi = int(own_lo[r]), int(own_hi[r])
        if hi <= lo:
            continue
        part = base[lo - s:hi - s]
        pos = np.arange(lo, hi) - int(lay.seg_start[g])
        b = pos // bin_size
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        seg_ids.append(np.full(len(starts), g, np.int64))
        bin_ids.append(b[starts])
        valid = ~np.isnan(part[:, 0])
        sums.append(np.add.reduceat(np.where(valid[:, None], part, 0.0), starts, axis=0))
        counts.append(np.add.reduceat(valid.astype(np.int64), starts))
    if not seg_ids:
        width = e_f.tokens.shape[1] * (2 if rc == "concat" else 1)
        return {"track_seg": np.zeros(0, np.int64), "track_bin": np.zeros(0, np.int64),
                "track_sum": np.zeros((0, width), np.float64), "track_count": np.zeros(0, np.int64)}
    return {"track_seg": np.concatenate(seg_ids), "track_bin": np.concatenate(bin_ids),
            "track_sum": np.concatenate(sums).astype(np.float64), "track_count": np.concatenate(counts)}


def _finalize(store, job, units, lay, attrs, per_token, track_bin, c, out_dtype, res) -> None:
    """Rank 0, every shard present: the variable-size arrays from the shards, then ``complete``."""
    sdt = np.float16 if out_dtype == "float16" else np.float32
    if per_token or track_bin:
        counts = np.zeros(lay.n, np.int64)
        for u in units:
            with np.load(job.out / u.shard) as z:
                counts[u.start:u.stop] = z["tokens"]
    if per_token:
        cu = np.zeros(lay.n + 1, np.int64)
        np.cumsum(counts, out=cu[1:])
        width = None
        for u in units:
            with np.load(job.out / u.shard) as z:
                if "token_states" in z and z["token_states"].size:
                    width = z["token_states"].shape[1]
                    break
        width = width or c
        chunk = 1 << 16
        store.create("tokens/states", (int(cu[-1]), width), out_dtype, chunk)
        store.create("tokens/spans", (int(cu[-1]), 2), np.int32, chunk)
        store.write_all("tokens/cu_seqlens", cu)
        for u in units:
            with np.load(job.out / u.shard) as z:
                if "token_states" in z:
                    store.write("tokens/states", int(cu[u.start]), z["token_states"].astype(sdt))
                    store.write("tokens/spans", int(cu[u.start]), z["token_spans"])
    if track_bin:
        tab = attrs["records"]
        off = np.asarray(tab["track_offset"], np.int64)
        total = int(sum(tab["n_bins"]))
        sums = None
        cnt = np.zeros(total, np.int64)
        for u in units:
            with np.load(job.out / u.shard) as z:
                if "track_seg" not in z or not len(z["track_seg"]):
                    continue
                idx = off[z["track_seg"]] + z["track_bin"]
                if sums is None:
                    sums = np.zeros((total, z["track_sum"].shape[1]), np.float64)
                np.add.at(sums, idx, z["track_sum"])
                np.add.at(cnt, idx, z["track_count"])
        if sums is None:
            sums = np.zeros((total, c), np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tracks = sums / cnt[:, None]
        store.write_all("tracks", tracks.astype(sdt))
    status = np.asarray(store.read("windows/status")[:])
    attrs = dict(attrs)
    attrs["summary"] = {"windows": int(lay.n), "embedded": int((status == 0).sum()),
                        "skipped": {"n_fraction": int((status == 1).sum())}, "shards": len(units)}
    attrs["complete"] = True
    store.set_attrs(attrs)
    # the shards were the done markers and the variable-size parts, now in the store
    shutil.rmtree(job.out, ignore_errors=True)
