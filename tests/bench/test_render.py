"""Views of records: markdown, summary, --compare (an injected regression is flagged), plots."""

from __future__ import annotations

import builtins
import copy
import sys

import pytest

from omicskern.bench import render, runner
from omicskern.bench.records import make_record


def _recs():
    out = []
    for L in (1024, 4096):
        for impl, v, base in (("omicskern", 2.0 * L / 1024, None), ("torch.fft", 3.0 * L / 1024, None)):
            out.append(make_record(dict(suite="ops", case="fft_conv", params={"L": L}, impl=impl,
                                        impl_desc=f"{impl} described", metric="time", unit="ms", value=v, median=v,
                                        min=0.97 * v, max=1.04 * v, repeats=5, clock="cpu",
                                        **({"baseline": "torch.fft", "baseline_value": 3.0 * L / 1024,
                                            "baseline_desc": "baseline: HyenaDNA's torch.fft"}
                                           if impl == "omicskern" else {}))))
    out.append(make_record(dict(suite="ops", case="fft_conv", params={"L": 1 << 20}, impl="omicskern",
                                metric="time", unit="ms", status="cut", note="cut: beyond the budget")))
    return out


def test_markdown_has_header_table_descriptions_and_cut_rows():
    md = render.markdown(_recs(), title="T", png="t.png")
    assert md.startswith("# T\n") and "![T](t.png)" in md and "Machine load at the start" in md
    assert "| L | implementation | metric | value | min–max | n | clock | ratio | vs | status |" in md
    assert "| 1024 | omicskern | time (ms) | 2 | 1.94–2.08 | 5 | cpu | 1.5x | torch.fft | ok |" in md
    assert "| 1048576 | omicskern | time (ms) | — | — | — | — | — | — | cut: beyond the budget |" in md
    assert "- **torch.fft**: torch.fft described" in md  # each implementation in one line beside its table
    assert "- fft_conv: omicskern 1.50x torch.fft (time) (range 1.50–1.50, 2 sizes)" in md
    assert "5 records; 1 cut" in render.summary(_recs())


def test_compare_flags_an_injected_regression_and_nothing_else():
    old = _recs()
    new = copy.deepcopy(old)
    same = render.compare(old, new)
    assert same and not any(x["regression"] or x["improvement"] for x in same)
    slow = new[2]  # omicskern at L=4096, made 30% slower (times scaled with their range)
    for k in ("value", "median", "min", "max"):
        slow[k] *= 1.3
    rows = render.compare(old, new)
    flagged = [x for x in rows if x["regression"]]
    assert len(flagged) == 1 and flagged[0]["params"] == {"L": 4096} and flagged[0]["impl"] == "omicskern"
    assert flagged[0]["change"] == pytest.approx(1 / 1.3 - 1)
    text = render.compare_text(rows)
    assert "REGRESSION ops/fft_conv [L=4096] omicskern time" in text and "1 regression" in text


def test_threshold_follows_the_noise_of_the_repeats():
    a = dict(median=1.0, min=0.9, max=1.1, repeats=5)  # +-10 %
    assert render.threshold(a, a) == pytest.approx(0.2)
    tight = dict(median=1.0, min=0.995, max=1.005, repeats=5)
    assert render.threshold(tight, tight) == render.MIN_THRESHOLD
    assert render.threshold(dict(median=1.0, repeats=1), tight) == render.SINGLE_RUN_THRESHOLD
    noisy = make_record(dict(suite="s", case="c", impl="i", metric="time", unit="ms", value=1.0, median=1.0,
                             min=0.6, max=1.6, repeats=5))
    worse = {**noisy, "value": 1.3, "median": 1.3, "min": 0.8, "max": 1.9}
    assert not render.compare([noisy], [worse])[0]["regression"]  # within the noise: not flagged


def test_compare_flags_a_real_slowdown_injected_in_a_suite(tmp_path, monkeypatch):
    """Two real runs of a registered suite; the second does 10x the work: --compare flags it."""
    from tests.bench import _toy_suite

    monkeypatch.setitem(runner.SUITES, "toy", "tests.bench._toy_suite")
    old = runner.run(["toy"], size="tiny", out=tmp_path / "a", plots=False, log=lambda m: None)["records"]
    monkeypatch.setitem(_toy_suite.WORK, "n", 200_000)
    new = runner.run(["toy"], size="tiny", out=tmp_path / "b", plots=False, log=lambda m: None)["records"]
    rows = {x["impl"]: x for x in render.compare(old, new)}
    assert rows["toy"]["regression"] and rows["toy"]["change"] < -0.5


def test_plots_without_matplotlib_say_how_to_get_them(monkeypatch):
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    with pytest.raises(render.PlotUnavailable, match=r"matplotlib \(an optional extra\): pip install 'omicskern\[bench\]'"):
        render.plot_records(_recs(), "x.png", "t")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "ops.png"
    assert render.plot_records(_recs(), p, "ops")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
