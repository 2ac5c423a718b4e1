"""Helpers shared by the benchmark scripts: repository paths, device names, file-name slugs and
median timing. Importing this module puts the repository root first on ``sys.path``, so a script
run as ``python benchmarks/bench_x.py`` imports the checkout's ``omicskern``.

Timing semantics that differ between scripts (CPU process time, interleaved best-of, time
budgets) stay in those scripts; only the identical pieces live here.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("OMICSKERN_SHARED", ROOT.parent / "shared"))


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (else ``platform.processor()``, else "cpu")."""
    return _cpu_model() or platform.processor() or "cpu"


def is_cuda(dev) -> bool:
    """``dev``: "cpu", "cuda", "cuda:1" or a ``torch.device``."""
    return str(dev).split(":")[0] == "cuda"


def device_name(dev) -> str:
    """GPU name, or the CPU model with torch's thread count, e.g. "AMD EPYC 7B13 (1 thread)"."""
    import torch

    if is_cuda(dev):
        return torch.cuda.get_device_name(dev)
    model = _cpu_model()
    if model is None:
        return platform.processor() or "cpu"
    n = torch.get_num_threads()
    return f"{model} ({n} thread{'s' if n > 1 else ''})"


def slug(name: str) -> str:
    """File-name-safe lower-case slug of a device name (at most 60 characters)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:60]


def cuda_median_s(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median seconds per call from ``triton.testing.do_bench`` (``warmup``/``rep`` in ms)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") / 1e3


def wall_median_s(fn, reps: int, warmup: int = 0) -> float:
    """Median wall-clock seconds of ``reps`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_note() -> str:
    """One sentence on how busy the machine was when the run started (1-minute load average vs
    CPU count), so a table says whether its timings were taken on a quiet or a shared machine."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "Machine load: unknown."
    n = os.cpu_count() or 1
    state = "quiet" if load < 0.5 * n else "busy: timings are noisy, ratios within a row steadier"
    return f"Machine load at the start: 1-min load average {load:.2f} on {n} CPUs ({state})."
