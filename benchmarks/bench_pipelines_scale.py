"""Thin wrapper: ``omicskern bench --suite pipelines`` (the cases live in :mod:`omicskern.bench`).

    python benchmarks/bench_pipelines_scale.py [--quick] [--device cpu|cuda] [--out DIR] [--compare OLD.jsonl]
"""

import sys

from _common import bench

if __name__ == "__main__":
    sys.exit(bench("pipelines"))
