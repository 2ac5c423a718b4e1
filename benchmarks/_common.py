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
