"""Thin wrapper: ``omicskern bench --suite tokenizers`` (the cases live in :mod:`omicskern.bench`).

    python benchmarks/bench_bpe.py [--quick] [--device cpu|cuda] [--out DIR] [--compare OLD.jsonl]
"""

import sys

from _common import bench

if __name__ == "__main__":
    sys.exit(bench("tokenizers"))
