"""A suite for the compare tests: times real work whose size the test sets (WORK), so a
regression can be injected on purpose by making the work larger."""

from omicskern.bench.cases import ab_records
from omicskern.bench.timing import interleaved

WORK = {"n": 20_000}


def _work(n):
    return sum(i * i for i in range(n))


def run(ctx):
    n = WORK["n"]
    t = interleaved({"toy": lambda: _work(n), "toy baseline": lambda: _work(20_000)}, repeats=5, min_repeats=5,
                    budget_s=0.0)
    return ab_records("sum of squares", {"size": 20_000}, t, {"toy": "the work under test",
                                                               "toy baseline": "fixed work"},
                      "toy baseline", "time", "ms", scale=1e3)
