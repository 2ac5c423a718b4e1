"""pytest-benchmark microbenchmarks (``pytest benchmarks --benchmark-only``): this checkout first on
sys.path. Not part of the test suite (pyproject's testpaths = ["tests"])."""

import _common  # noqa: F401  (puts the checkout on sys.path)
