"""Record schema, JSONL/CSV files, the pytest-benchmark loader."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from omicskern.bench import records as R
from omicskern.errors import InvalidFileError

ROOT = Path(__file__).resolve().parents[2]


def _raw(**kw):
    return dict(case="fft_conv", params={"L": 1024}, impl="omicskern", metric="time", unit="ms", value=2.0,
                median=2.0, min=1.9, max=2.4, repeats=5, clock="cpu", **kw)


def test_record_has_every_schema_field_and_provenance():
    common = R.provenance("cpu", run_id="r1")
    r = R.make_record({**_raw(baseline="torch.fft", baseline_value=3.0), "suite": "ops"}, common)
    assert list(r) == list(R.FIELDS)
    assert r["schema"] == R.SCHEMA_VERSION and r["status"] == "ok" and r["run_id"] == "r1"
    assert r["better"] == "lower"  # a time
    assert r["ratio"] == pytest.approx(1.5)  # baseline / value for a time: 1.5x faster
    d = r["device"]
    for k in ("kind", "name", "cpu_model", "threads", "cpu_count", "load_1m", "torch", "python"):
        assert k in d, k
    assert d["kind"] == "cpu" and isinstance(d["threads"], int)
    assert r["omicskern"] and r["timestamp"].endswith("+00:00")
    json.dumps(r, allow_nan=False)


def test_ratio_of_a_throughput_is_value_over_baseline():
    r = R.make_record({**_raw(), "suite": "s", "metric": "throughput", "unit": "Mbp/s", "value": 300.0,
                       "baseline_value": 100.0})
    assert r["better"] == "higher" and r["ratio"] == pytest.approx(3.0)


@pytest.mark.parametrize("change, message", [
    ({"case": ""}, "'case' must be a non-empty string"),
    ({"unit": None}, "'unit' must be a non-empty string"),
    ({"value": "fast"}, "'value' must be a number"),
    ({"status": "great"}, "status 'great' is not one of"),
    ({"speed": 3}, "unknown key(s) ['speed']"),
    ({"value": None, "status": "ok"}, "status 'ok' needs a value"),
], ids=["empty-case", "no-unit", "text-value", "bad-status", "unknown-key", "ok-without-value"])
def test_bad_records_name_the_record_and_key(change, message):
    with pytest.raises(R.RecordError) as e:
        R.make_record({**_raw(), "suite": "s", **change}, where="suite s, record 7")
    assert "suite s, record 7" in str(e.value) and message in str(e.value)


def test_jsonl_appends_and_reads_back_and_csv_flattens(tmp_path):
    common = R.provenance("cpu")
    recs = [R.make_record({**_raw(), "suite": "ops", "params": {"L": L}}, common) for L in (1024, 2048)]
    p = tmp_path / "r" / "ops.jsonl"
    R.append_jsonl(p, recs[:1])
    R.append_jsonl(p, recs[1:])  # appended, not replaced
    back = R.read_jsonl(p)
    assert back == recs
    c = R.write_csv(tmp_path / "ops.csv", back)
    rows = list(csv.DictReader(open(c)))
    assert [row["params.L"] for row in rows] == ["1024", "2048"]
    assert rows[0]["device.name"] == recs[0]["device"]["name"]


def test_read_jsonl_names_the_bad_line(tmp_path):
    p = tmp_path / "old.jsonl"
    p.write_text(json.dumps(R.make_record({**_raw(), "suite": "s"})) + "\n{not json\n")
    with pytest.raises(InvalidFileError, match=r"old.jsonl: line 2: not JSON"):
        R.read_jsonl(p)
    p.write_text('{"suite": "s", "case": "c"}\n')
    with pytest.raises(InvalidFileError, match=r"line 1: not a benchmark record \(missing \['impl', 'metric', 'unit'\]\)"):
        R.read_jsonl(p)


def test_pytest_benchmark_json_loads_into_records(tmp_path):
    """The real path: pytest-benchmark runs one microbenchmark of benchmarks/ and writes its JSON."""
    pytest.importorskip("pytest_benchmark")
    from omicskern.bench.pytest_json import load

    out = tmp_path / "micro.json"
    p = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_micro.py", "-q", "-p", "no:cacheprovider",
                        "-k", "test_char_omicskern or test_char_numpy_lookup", "--benchmark-only",
                        "--benchmark-max-time=0.01", "--benchmark-min-rounds=3", "--benchmark-warmup=off",
                        f"--benchmark-json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    recs = load(out)
    assert {r["impl"] for r in recs} == {"test_char_omicskern", "test_char_numpy_lookup"}
    for r in recs:
        assert r["suite"] == "micro" and r["unit"] == "us" and r["repeats"] >= 3
        assert r["min"] <= r["median"] <= r["max"] and r["case"].startswith("char encode")
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(InvalidFileError, match="not pytest-benchmark JSON"):
        load(bad)
