"""``omicskern bench`` / ``python -m omicskern.bench`` / the thin wrappers in benchmarks/:
argument errors, a real run writing every file, --compare exit status, the GPU check dry run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omicskern.bench.records import read_jsonl
from omicskern.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [
    (["--suite", "nope"], "--suite: unknown suite 'nope'"),
    (["--device", "tpu"], "--device: expected cpu or cuda[:N], got 'tpu'"),
    (["--compare", "/no/such/old.jsonl"], "--compare: not found: /no/such/old.jsonl"),
    (["--quick", "--tiny"], "--tiny and --quick: choose one"),
], ids=["unknown-suite", "bad-device", "missing-compare", "quick-and-tiny"])
def test_usage_errors_exit_2_naming_the_flag(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert f"omicskern bench: error: {message}" in err


def test_cuda_without_a_device_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_out_that_is_a_file_and_a_bad_compare_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["bench", "--suite", "pipelines", "--tiny", "--out", str(f)]) == 2
    assert f"--out: {f} exists and is not a folder" in capsys.readouterr().err
    bad = tmp_path / "old.jsonl"
    bad.write_text("{broken\n")
    assert main(["bench", "--suite", "pipelines", "--tiny", "--compare", str(bad)]) == 1
    assert f"omicskern bench: error: {bad}: line 1: not JSON" in capsys.readouterr().err


def test_wrapper_script_runs_the_suite_and_compare_flags_a_regression(tmp_path, capsys):
    """benchmarks/bench_pipelines_scale.py (a thin wrapper) in a fresh process writes JSONL, CSV and
    markdown; run again with --compare against a copy whose throughputs were doubled (an injected
    regression of the new run), it exits 1 and names the regression."""
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "benchmarks/bench_pipelines_scale.py", "--tiny", "--out", str(out), "--no-plots"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    stem = out / "pipelines_cpu_tiny"
    for ext in ("jsonl", "csv", "md"):
        assert stem.with_suffix(f".{ext}").is_file()
    assert "omicskern bench: wrote" in p.stderr and "records" in p.stdout
    recs = read_jsonl(stem.with_suffix(".jsonl"))
    assert {r["impl"] for r in recs} == {"tokenize -> .npz", "tokenize -> shards", "rerun (all shards done)"}
    old = tmp_path / "old.jsonl"
    with open(old, "w") as f:
        for r in recs:
            r = {**r, "value": r["value"] * 2, "median": r["median"] * 2}  # the old run was twice as fast
            f.write(json.dumps(r) + "\n")
    rc = main(["bench", "--suite", "pipelines", "--tiny", "--out", str(tmp_path / "res2"), "--no-plots",
               "--compare", str(old)])
    cap = capsys.readouterr()
    assert rc == 1, cap.out + cap.err[-2000:]
    assert "REGRESSION pipelines/tokenize scale" in cap.out
    assert "omicskern bench: error: regression against" in cap.err


def test_python_dash_m_entry_point():
    p = subprocess.run([sys.executable, "-m", "omicskern.bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("usage: omicskern bench")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh without a device: versions, then the gpu suite at tiny sizes through
    the Triton interpreter; records and tables in one folder, no GPU figure claimed."""
    # the models section is the models suite (its own tiny run is tested in test_suites.py)
    env = {**os.environ, "DRY_RUN": "1", "SKIP_BUILD": "1", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
           "SECTIONS": "attention fft_conv tests"}
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    for section in ("attention", "fft_conv", "tests"):  # one invocation each, its own time limit
        assert f"{section} rc=0" in p.stdout, p.stdout[-3000:]
    assert (tmp_path / "gpu_cpu_tiny.md").read_text().startswith("# omicskern GPU check")
    versions = (tmp_path / "versions.txt").read_text()
    assert "torch" in versions and "omicskern" in versions
    recs = read_jsonl(tmp_path / "gpu_cpu_tiny.jsonl")
    cases = {r["case"] for r in recs}
    assert {"attention", "attention max error vs SDPA math fp32", "attention block sweep (fwd)",
            "attention block sweep (fwd+bwd)", "fft_conv", "fft_conv max rel error vs torch.fft",
            "gpu-marked tests"} <= cases
    assert not [r for r in recs if r["status"] == "error"], [r["note"] for r in recs if r["status"] == "error"]
    assert all("DRY RUN" in (r["note"] or "") for r in recs if r["status"] == "ok")
    errs = [r for r in recs if r["metric"] in ("max_abs_err", "max_rel_err")]
    assert errs and all(r["value"] < 2e-2 for r in errs)  # the interpreter's kernels agree with SDPA/torch.fft
