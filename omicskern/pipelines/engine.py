"""The inference engine shared by the embedding jobs: input prepared ahead of the model in a
background thread, token-budget batches, host -> device copies that overlap compute, and a clock
that says where the time went.

* :class:`Prefetcher` runs a producer (window extraction + C++ tokenization, which releases the
  GIL; or cell reading + ranking) ``depth`` items ahead in a thread, so the model never waits on it
  unless input really is the bottleneck; :attr:`Prefetcher.wait_s` is the time the consumer
  waited. An exception in the producer is raised in the consumer, at the item where it happened.
* :func:`embed_rows` embeds every row of a :class:`~omicskern.batch.Batch` in length-sorted
  groups under a token budget (ragged: no padding for attention models; causal convolutions pad
  only to the longest row of their group, which sorting keeps close) and returns the pooled
  vectors (and optionally the per-token states) in the batch's row order.
* :func:`configure_threads`: torch's intra-op threads get the cores; the producer runs the C++
  tokenizers single-threaded beside them, so they do not fight for cores.

On CUDA the ids are copied from pinned host memory on a side stream (``non_blocking``) while the
previous group computes, and results come back to pinned buffers asynchronously; on CPU the same
code path runs synchronously.

Example:
    >>> it = Prefetcher(iter(range(3)), depth=2)
    >>> list(it)
    [0, 1, 2]
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

__all__ = ["Prefetcher", "Clock", "embed_rows", "configure_threads", "RowEmbeddings"]

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Iterates ``source`` in a daemon thread, ``depth`` items ahead of the consumer.

    ``wait_s``: seconds the consumer spent waiting for the next item (input-bound time);
    ``produce_s``: seconds the producer spent making items. :meth:`close` (or leaving a ``with``
    block) stops the producer at its next item.
    """

    def __init__(self, source: Iterable, depth: int = 2, name: str = "omicskern-prefetch"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_s = 0.0
        self.produce_s = 0.0
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(source),), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                self.produce_s += time.perf_counter() - t0
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
            return
        self._put(_END)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        item = self._q.get()
        self.wait_s += time.perf_counter() - t0
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Clock:
    """Where a job's time went: named phases in seconds (``with clock("model"): ...``)."""

    phases: dict = field(default_factory=dict)

    def __call__(self, name: str):
        return _Phase(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + float(seconds)

    def get(self, name: str) -> float:
        return self.phases.get(name, 0.0)


class _Phase:
    def __init__(self, clock: Clock, name: str):
        self.clock, self.name = clock, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.clock.add(self.name, time.perf_counter() - self.t0)


def configure_threads(threads: int | None) -> int:
    """Gives torch ``threads`` intra-op threads (default: the cores this process may use) and
    returns the number set. The input thread's tokenizers run with ``num_threads=1`` beside them."""
    import torch

    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            threads = os.cpu_count() or 1
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


@dataclass
class RowEmbeddings:
    """:func:`embed_rows`' result, rows in the input batch's order.

    pooled: float32 ``[N, C]``.
    tokens: float32 ``[T, C]`` per-token states back to back (``None`` unless asked), row ``i``
        at ``cu_seqlens[i]:cu_seqlens[i + 1]`` of the input batch.
    """

    pooled: np.ndarray
    tokens: np.ndarray | None = None


def _to_host(t, pinned: bool):
    import torch

    if t.device.type == "cpu":
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
    out.copy_(t, non_blocking=pinned)
    return out


def embed_rows(model, batch, *, pooling: str = "mean", layer: int | None = None, max_tokens: int = 16384,
               per_token: bool = False, clock: Clock | None = None) -> RowEmbeddings:
    """Embeds every row of a numpy :class:`~omicskern.batch.Batch` with ``model.embed`` in
    length-sorted groups of at most ``max_tokens`` tokens (a longer row is a group of its own).

    Returns float32 arrays in the batch's row order; each row's values are what it gets alone
    (the model interface's batch invariance), so the grouping never changes results beyond float
    tolerance. ``pooling="none"`` skips pooling (``per_token`` must then be set).
    """
    import torch

    clock = clock or Clock()
    n = len(batch)
    if n == 0:
        return RowEmbeddings(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32) if per_token else None)
    dev = model.device
    cuda = dev.type == "cuda"
    copy_stream = torch.cuda.Stream(device=dev) if cuda else None
    plan = batch.plan(max_tokens, padded=getattr(model, "pads_rows", False))
    pooled_parts, token_parts, pending = [], [], []
    pool_name = "mean" if pooling == "none" else pooling

    def stage(rows):
        sub = batch.select(rows)
        if not cuda:
            return sub
        with torch.cuda.stream(copy_stream):
            tb = sub.to_torch("cpu")
            tb = tb.replace(input_ids=tb.input_ids.pin_memory(), cu_seqlens=tb.cu_seqlens.pin_memory())
            return tb.to_torch(dev, non_blocking=True)

    groups = list(plan.groups)
    nxt = stage(groups[0]) if groups else None
    with torch.inference_mode():
        for gi, rows in enumerate(groups):
            sub = nxt
            if cuda:
                cur = torch.cuda.current_stream(dev)
                cur.wait_stream(copy_stream)
                # made on the copy stream, read on this one: keep the allocator from reusing them early
                for name in ("input_ids", "cu_seqlens", "values", "soft_mask", "token_spans"):
                    t = getattr(sub, name, None)
                    if isinstance(t, torch.Tensor) and t.is_cuda:
                        t.record_stream(cur)
            # stage the next group's copy while this one computes
            nxt = stage(groups[gi + 1]) if gi + 1 < len(groups) else None
            with clock("model"):
                out = model.embed(sub, pooling=pool_name, layer=layer)
                pooled = _to_host(out.pooled.float(), cuda) if pooling != "none" else None
                toks = _to_host(out.tokens.float(), cuda) if per_token else None
            pending.append((pooled, toks))
        if cuda:
            torch.cuda.synchronize(dev)
    for pooled, toks in pending:
        pooled_parts.append(None if pooled is None else pooled.numpy())
        token_parts.append(None if toks is None else toks.numpy())
    pooled_all = None
    if pooling != "none":
        pooled_all = plan.restore(pooled_parts).astype(np.float32, copy=False)
    tokens_all = None
    if per_token:
        # groups hold rows in plan order; put each row's token block back at its input position
        lengths = np.diff(np.asarray(batch.cu_seqlens, dtype=np.int64))
        cu = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=cu[1:])
        c = token_parts[0].shape[1]
        tokens_all = np.empty((int(cu[-1]), c), np.float32)
        for rows, part in zip(groups, token_parts):
            off = 0
            for r in rows:
                ln = int(lengths[r])
                tokens_all[cu[r]:cu[r] + ln] = part[off:off + ln]
                off += ln
    if pooled_all is None:
        pooled_all = np.zeros((n, 0), np.float32)
    return RowEmbeddings(pooled_all, tokens_all)
