"""Shared by the scripts in ``benchmarks/``: importing it puts this checkout first on ``sys.path``.
Timing, records and rendering live in one place, :mod:`omicskern.bench`; the scripts here are
thin wrappers over ``omicskern bench`` (or plain suites exposing ``run(quick) -> list[dict]``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def bench(suite: str, argv: list[str] | None = None) -> int:
    """``omicskern bench --suite SUITE ARGV...`` in this process."""
    from omicskern.cli import main

    return main(["bench", "--suite", suite, *(sys.argv[1:] if argv is None else argv)])


# -- names the plain suite scripts (bench_embed_genome, bench_variants, bench_embed_cells,
# bench_perturb, bench_selective_scan) use; one implementation each, in omicskern.bench ------------
SHARED = Path(__import__("os").environ.get("OMICSKERN_SHARED", ROOT.parent / "shared"))


def device_name(device="cpu") -> str:
    """GPU name, or the CPU model with torch's thread count (``omicskern.bench.records.device_info``)."""
    from omicskern.bench.records import device_info

    return device_info(str(device))["name"]


def cpu_name() -> str:
    from omicskern.bench.records import _cpu_model

    return _cpu_model() or "cpu"


def slug(name: str) -> str:
    """File-name-safe slug of a device name (``omicskern.bench.runner.device_slug``)."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:60]


def load_note() -> str:
    from omicskern.bench.records import load_note as _load_note

    return _load_note()
