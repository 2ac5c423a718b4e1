"""omicskern's benchmark suite: one record per measurement, suites of cases, views of the records.

    omicskern bench --suite long-context --quick          # or: python -m omicskern.bench ...
    >>> from omicskern.bench import records, timing, render, runner

* :mod:`omicskern.bench.records`: the record schema, device/machine info, JSONL and CSV files;
* :mod:`omicskern.bench.timing`: the one timing helper (median of repeats after warm-up; process
  CPU time + wall on CPU, do_bench / CUDA events on GPU), the interleaved A/B runner, peak memory;
* :mod:`omicskern.bench.render`: markdown tables, summary, ``--compare``, PNG plots;
* :mod:`omicskern.bench.runner`: the suite registry (:data:`~omicskern.bench.runner.SUITES`,
  one entry per suite) and the driver;
* :mod:`omicskern.bench.pytest_json`: pytest-benchmark JSON -> records.
"""

from omicskern.bench.records import SCHEMA_VERSION, make_record, read_jsonl  # noqa: F401
from omicskern.bench.runner import SUITES, Context, run  # noqa: F401

__all__ = ["SCHEMA_VERSION", "SUITES", "Context", "make_record", "read_jsonl", "run"]
