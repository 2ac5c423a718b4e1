"""pytest-benchmark's JSON (``pytest benchmarks --benchmark-only --benchmark-json=micro.json``) as
benchmark records, so microbenchmarks land in the same files, tables and ``--compare``.

    >>> from omicskern.bench.pytest_json import load
    >>> recs = load("micro.json")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omicskern.bench.records import make_record, provenance


def load(path: str | os.PathLike, suite: str = "micro") -> list[dict]:
    """Records (metric ``time``, unit ``us``, clock ``wall``) of every benchmark in the file: value =
    median, min/max, repeats = rounds; ``group`` -> case (else the test's name), ``params`` from
    pytest's parametrisation; device and commit from the file's ``machine_info``/``commit_info``.
    A file that is not pytest-benchmark JSON raises :class:`~omicskern.errors.InvalidFileError`."""
    from omicskern.errors import InvalidFileError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        benches = data["benchmarks"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InvalidFileError(f"{path}: not pytest-benchmark JSON ({type(e).__name__}: {e})") from None
    common = provenance("cpu")
    mi, ci = data.get("machine_info") or {}, data.get("commit_info") or {}
    if mi:
        common["device"] = {**common["device"], "cpu_model": (mi.get("cpu") or {}).get("brand_raw")
                            or common["device"]["cpu_model"], "python": mi.get("python_version")}
    if ci.get("id"):
        common["git_sha"] = ci["id"][:12] + ("+dirty" if ci.get("dirty") else "")
    if data.get("datetime"):
        common["timestamp"] = data["datetime"]
    out = []
    for i, b in enumerate(benches):
        st = b.get("stats") or {}
        if "median" not in st:
            raise InvalidFileError(f"{path}: benchmark {i} ({b.get('name')}) has no stats.median")
        out.append(make_record(dict(
            suite=suite, case=b.get("group") or b.get("name", "").split("[")[0], params=b.get("params") or {},
            impl=b.get("name") or f"benchmark {i}", impl_desc=b.get("fullname"), metric="time", unit="us",
            value=st["median"] * 1e6, median=st["median"] * 1e6, min=st.get("min", st["median"]) * 1e6,
            max=st.get("max", st["median"]) * 1e6, repeats=st.get("rounds"), clock="wall",
            wall_median_s=st["median"]), common, where=f"{path}: benchmark {i}"))
    return out
