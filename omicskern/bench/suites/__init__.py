"""The benchmark suites (one module each; registered in :data:`omicskern.bench.runner.SUITES`)."""
