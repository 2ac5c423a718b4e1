"""Every suite dry-run at tiny sizes through the real runner: schema-checked records, files, the
baselines beside omicskern's figures, the long-context cut and the selective-scan slot."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from omicskern.bench import runner
from omicskern.bench.records import FIELDS, read_jsonl


def _run(suite, tmp_path, **kw):
    return runner.run([suite], size="tiny", out=tmp_path, plots=False, log=lambda m: None, **kw)


def _ok(recs):
    return [r for r in recs if r["status"] == "ok"]


def _check_files(res, tmp_path, suite):
    stem = runner.file_stem(suite, "cpu", "tiny")
    for ext in ("jsonl", "csv", "md"):
        assert (tmp_path / f"{stem}.{ext}").is_file(), ext
    assert read_jsonl(tmp_path / f"{stem}.jsonl") == res["records"]
    for r in res["records"]:
        assert list(r) == list(FIELDS) and r["suite"] == suite
        assert r["status"] != "error", r["note"]


def test_ops_suite(tmp_path):
    res = _run("ops", tmp_path)
    _check_files(res, tmp_path, "ops")
    recs = _ok(res["records"])
    attn = [r for r in recs if r["case"] == "attention"]
    assert {r["impl"] for r in attn} == {"omicskern sdpa", "sdpa+bias", "eager"}  # CPU: no interpreter timing
    assert all(r["baseline"] == "sdpa+bias" and r["ratio"] > 0 for r in attn if r["impl"] != "sdpa+bias")
    fft = [r for r in recs if r["case"] == "fft_conv"]
    assert {r["params"]["mode"] for r in fft} == {"fwd", "fwd+bwd"}
    assert all(r["baseline_desc"].startswith("baseline: HyenaDNA") for r in fft if r["impl"] != "torch.fft (HyenaDNA)")
    assert any(r["metric"] == "peak_mem" and r["unit"] == "MiB" for r in recs)


def test_long_context_suite_cut_and_pending_slot(tmp_path, monkeypatch):
    from omicskern.bench.suites import long_context as lc

    monkeypatch.setattr(lc, "cut_seconds", lambda ctx: 0.0)  # every curve ends after its first L
    res = _run("long-context", tmp_path)
    _check_files(res, tmp_path, "long-context")
    recs = res["records"]
    first, second = lc.lengths(runner.Context(size="tiny"))
    fwd = [r for r in recs if r["case"] == "time per token (fwd)"]
    ran = {r["impl"] for r in fwd if r["status"] == "ok"}
    assert {"attention bidirectional: omicskern sdpa", "attention causal: eager", "attention ALiBi: omicskern sdpa",
            "fft_conv: omicskern", "fft_conv: torch.fft (HyenaDNA)", "HyenaOperator: omicskern"} <= ran
    assert all(r["params"]["L"] == first for r in fwd if r["status"] == "ok")
    cut = [r for r in fwd if r["status"] == "cut"]
    assert {r["impl"] for r in cut} == ran and all(r["params"]["L"] == second for r in cut)
    assert all("budget" in r["note"] for r in cut)
    try:
        import omicskern.ops.selective_scan  # noqa: F401
    except ImportError:
        pend = [r for r in fwd if r["impl"].startswith("selective_scan")]
        assert pend and all(r["status"] == "pending" for r in pend)
    models = [r for r in recs if r["case"] == "model tokens/s (inference)" and r["status"] == "ok"]
    assert {r["impl"] for r in models} == {"HyenaDNA-shaped", "DNABERT-2-shaped"}
    p = models[0]["params"]
    assert abs(p["hyenadna_params"] - p["dnabert2_params"]) < 0.1 * p["dnabert2_params"]  # matched


def test_long_context_selective_scan_curve_appears_when_the_op_imports(tmp_path, monkeypatch):
    """The slot: once omicskern.ops.selective_scan imports, its curve is measured (here a plain
    sequential scan with mamba_ssm's signature stands in for the op another branch is writing)."""
    def scan(u, delta, A, B, C, D=None, z=None):
        dA = torch.exp(delta[..., None] * A[None, :, None, :])  # [b, d, l, n]
        dBu = delta[..., None] * B.transpose(1, 2)[:, None] * u[..., None]
        x = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
        ys = []
        for t in range(u.shape[-1]):
            x = dA[:, :, t] * x + dBu[:, :, t]
            ys.append((x * C[:, None, :, t]).sum(-1))
        y = torch.stack(ys, -1)
        return y + u * D[:, None] if D is not None else y

    mod = types.ModuleType("omicskern.ops.selective_scan")
    mod.selective_scan, mod.selective_scan_ref = scan, scan
    monkeypatch.setitem(sys.modules, "omicskern.ops.selective_scan", mod)
    from omicskern.bench.suites import long_context as lc

    fams = {f.name: f for f in lc.families(runner.Context(size="tiny"))}
    ss = fams["selective_scan"]
    assert ss.pending is None and ss.impls == ["selective_scan: omicskern", "selective_scan: reference"]
    calls = ss.build(16, "fwd+bwd")
    for name, (call, leaves, dout) in calls.items():
        y = call()
        assert y.shape == dout.shape
        lc._as_fn(call, leaves, dout, "fwd+bwd")()


def test_tokenizers_suite_ids_checked_and_baselines(tmp_path):
    res = _run("tokenizers", tmp_path)
    _check_files(res, tmp_path, "tokenizers")
    recs = _ok(res["records"])
    cases = {r["case"] for r in recs}
    assert {"char (HyenaDNA vocab)", "NT 6-mer", "overlapping 6-mer (DNABERT-1)", "BPE (DNABERT-2 tokenizer.json)",
            "BPE training"} <= cases
    checked = [r for r in recs if r["params"].get("input") == "10 kbp chunks" and r["params"].get("threads") == 1]
    assert checked and all(r["note"] == "ids equal to omicskern's: all" for r in checked)
    impls = {r["impl"] for r in recs}
    assert {"numpy lookup table", "HF tokenizers BPE", "HF BPE, no merges"} <= impls


def test_cells_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("OMICSKERN_BENCH_DIR", str(tmp_path))
    res = _run("cells", tmp_path)
    _check_files(res, tmp_path, "cells")
    recs = _ok(res["records"])
    assert {r["impl"] for r in recs} == {"omicskern in-memory CSR", "omicskern backed h5ad", "numpy", "reference path"}
    assert all("equal to the numpy reference" in r["note"] and r["note"].endswith("yes") for r in recs)
    assert all(r["baseline"] == "numpy" for r in recs if r["impl"].startswith("omicskern"))


def test_models_suite(tmp_path):
    pytest.importorskip("transformers")
    res = _run("models", tmp_path)
    _check_files(res, tmp_path, "models")
    recs = _ok(res["records"])
    assert {r["case"] for r in recs} >= {"dnabert2", "nt", "geneformer", "hyenadna"}
    assert all(r["baseline"] == "reference" for r in recs if r["impl"] != "reference" and r["unit"] == "tokens/s")


def test_a_failing_suite_is_one_error_record_and_the_run_goes_on(tmp_path, monkeypatch):
    mod = types.ModuleType("broken_suite")

    def run(ctx):
        raise RuntimeError("boom")
    mod.run = run
    monkeypatch.setitem(sys.modules, "broken_suite", mod)
    monkeypatch.setitem(runner.SUITES, "broken", "broken_suite")
    res = runner.run(["broken"], size="tiny", out=tmp_path, plots=False, log=lambda m: None)
    (r,) = res["records"]
    assert r["status"] == "error" and r["note"] == "RuntimeError: boom"


def test_script_suites_are_one_entry_and_skip_when_absent(tmp_path, monkeypatch):
    script = tmp_path / "bench_x.py"
    script.write_text("def run(quick):\n    return [dict(case='c', impl='i', metric='throughput', unit='items/s',"
                      " value=2.0 if quick else 1.0)]\n")
    monkeypatch.setitem(runner.SUITES, "x", str(script))  # absolute paths work too
    res = runner.run(["x"], size="quick", out=tmp_path, plots=False, log=lambda m: None)
    (r,) = res["records"]
    assert r["suite"] == "x" and r["value"] == 2.0 and r["status"] == "ok" and r["device"]["kind"] == "cpu"
    monkeypatch.setitem(runner.SUITES, "y", "benchmarks/bench_not_there.py")
    (r,) = runner.run(["y"], size="quick", out=tmp_path, plots=False, log=lambda m: None)["records"]
    assert r["status"] == "skipped" and "not in this checkout" in r["note"]
    with pytest.raises(runner.SuiteError, match="unknown suite 'nope'"):
        runner.expand(["nope"])
    assert "gpu" not in runner.expand("all") and "long-context" in runner.expand("all")
