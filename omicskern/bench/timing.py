"""The one timing helper of the benchmark suite, and peak memory.

* CUDA: ``triton.testing.do_bench`` (median; its own warm-up and cache flush) when Triton is
  importable, else CUDA events (median of repeats after a warm-up).
* CPU: every repeat records both process CPU time (``time.process_time``: what the work costs,
  steady on a shared machine, all threads summed) and wall time; ``clock`` says which one the
  figure uses. Pin torch to one thread (:func:`pinned_threads`) when CPU time is compared.
* :func:`interleaved` runs A, B, A, B, ...: load from other jobs hits every implementation alike,
  so the ratio of two interleaved medians is steadier than either absolute time.
* Repeats: ``warmup`` untimed calls, then at least ``min_repeats`` and at most ``repeats`` timed
  calls, stopping once ``budget_s`` seconds are spent. A first call longer than the budget is the
  measurement (slow baselines would otherwise dominate the run).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Timing:
    """Seconds per call over the repeats, on the clock the figure uses (``clock``), plus the other
    CPU clock. ``median``/``min``/``max`` are in seconds."""

    times: list[float]
    clock: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def repeats(self) -> int:
        return len(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative noise of the repeats."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def fields(self, per: float = 1.0, scale: float = 1.0, rate: bool = False) -> dict:
        """Record fields for a metric derived from the times: ``rate=False``: time * scale / per
        (e.g. ms per token); ``rate=True``: per / time / scale (e.g. Mbp/s with per = bases,
        scale = 1e6). min/max follow the metric's direction (a rate's min is the slowest call)."""
        def conv(t):
            return per / t / scale if rate else t * scale / per
        vals = [conv(t) for t in self.times]
        out = {"value": conv(self.median), "median": conv(self.median), "min": min(vals), "max": max(vals),
               "repeats": self.repeats, "clock": self.clock}
        if self.wall:
            out["wall_median_s"] = statistics.median(self.wall)
        if self.cpu:
            out["cpu_median_s"] = statistics.median(self.cpu)
        return out


def is_cuda(device) -> bool:
    return str(device).split(":")[0] == "cuda"


def _sync(device) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.synchronize()


def _cuda_time(fn, warmup_ms: float, rep_ms: float) -> Timing:
    try:
        import triton.testing

        ts = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return Timing([t / 1e3 for t in ts], "cuda")
    except ImportError:
        pass
    import torch

    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(ts) < 3 or (time.perf_counter() < t_end and len(ts) < 1000):
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return Timing(ts, "cuda")


def measure(fn: Callable[[], object], *, device="cpu", repeats: int = 20, min_repeats: int = 3,
            warmup: int = 1, budget_s: float = 1.0, clock: str = "cpu", cuda_rep_ms: float = 100.0) -> Timing:
    """Seconds per call of ``fn()`` (see the module docstring). ``clock``: "cpu" or "wall" on
    CPU; CUDA always uses device time."""
    if is_cuda(device):
        return _cuda_time(fn, warmup_ms=25, rep_ms=cuda_rep_ms)
    return interleaved({"_": fn}, repeats=repeats, min_repeats=min_repeats, warmup=warmup, budget_s=budget_s,
                       clock=clock)["_"]


def interleaved(fns: dict[str, Callable[[], object]], *, device="cpu", repeats: int = 20, min_repeats: int = 3,
                warmup: int = 1, budget_s: float = 1.0, clock: str = "cpu") -> dict[str, Timing]:
    """Times every ``fn`` round after round (A, B, A, B...), the interleaved A/B runner. The budget
    is for all of them together. On CUDA each is timed with :func:`measure` in turn."""
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    if is_cuda(device):
        return {k: _cuda_time(f, 25, 100) for k, f in fns.items()}
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(max(repeats, 1)):
        for k, f in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
        if i + 1 >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return {k: Timing(list(cpu[k] if clock == "cpu" else wall[k]), clock, wall[k], cpu[k]) for k in fns}


@contextlib.contextmanager
def pinned_threads(n: int | None):
    """torch (intra-op) threads set to ``n`` inside the block (None: unchanged). Comparisons of
    process CPU time pin to 1: idle-spinning worker threads would count as work."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- peak memory ---------------------------------------------------------------------------------
_MALLOPT_DONE = False


def _fixed_mmap_threshold() -> None:
    """glibc: blocks >= 128 KiB through mmap and returned on free (M_MMAP_THRESHOLD fixed, which
    also stops the dynamic threshold from growing), so the resident set tracks live tensors and
    one call's RSS peak is that call's own, not the cached heap's."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE:
        return
    _MALLOPT_DONE = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_stderr():
    """fd 2 to /dev/null inside the block (the profiler's C++ side logs its start and stop there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _torch_cpu_peak(fn) -> float:
    """Peak bytes of tensors the torch CPU allocator held during ``fn()`` beyond what was live
    before: the running sum of the profiler's memory events (+ allocation, - free) in time order."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return float(peak)


def peak_memory(fn: Callable[[], object], *, device="cpu", method: str = "auto") -> tuple[float | None, str]:
    """(peak bytes above what was live before ``fn()``, method). Methods: ``cuda``
    (``torch.cuda.max_memory_allocated`` delta), ``torch`` (CPU tensors: the torch allocator's
    peak from the profiler's memory events, exact to the byte), ``tracemalloc`` (Python and numpy
    allocations), ``rss`` (Linux: peak resident set growth during the call after resetting VmHWM;
    coarse: the kernel updates the counters in batches of pages), ``maxrss`` (``ru_maxrss``
    growth: only a new process-wide peak shows). ``auto``: cuda on GPU, torch on CPU."""
    gc.collect()
    if method == "auto":
        method = "cuda" if is_cuda(device) else "torch"
    if method == "torch":
        return _torch_cpu_peak(fn), method
    if method == "cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base), method
    if method == "tracemalloc":
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return float(peak), method
    if method == "rss":
        _fixed_mmap_threshold()
        gc.collect()
        if _reset_hwm():
            base = _status_kb("VmRSS:")
            fn()
            hwm = _status_kb("VmHWM:")
            if base is not None and hwm is not None:
                return float(max(hwm - base, 0) * 1024), method
        method = "maxrss"
    if method == "maxrss":
        import resource

        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return float((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) * 1024), method
    raise ValueError(f"peak_memory: unknown method {method!r}")
