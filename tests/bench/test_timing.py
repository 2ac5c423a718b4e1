"""The timing helper's bookkeeping and peak memory (no speed is asserted: timing belongs in
benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omicskern.bench.timing import Timing, interleaved, measure, peak_memory, pinned_threads


def test_interleaved_runs_every_fn_in_rounds_and_keeps_both_clocks():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    t = interleaved(fns, repeats=4, min_repeats=4, warmup=1, budget_s=0.0)
    assert order == ["a", "b"] * 5  # one warm-up round, then 4 alternating rounds
    for name in fns:
        assert t[name].repeats == 4 and len(t[name].wall) == 4 and len(t[name].cpu) == 4
        assert t[name].clock == "cpu" and t[name].times == t[name].cpu


def test_budget_stops_after_min_repeats():
    calls = []
    t = measure(lambda: calls.append(1), repeats=1000, min_repeats=3, warmup=0, budget_s=0.0)
    assert t.repeats == 3 and len(calls) == 3


def test_fields_of_a_rate_and_a_time():
    t = Timing([2.0, 1.0, 4.0], "wall")
    f = t.fields(per=1e6, scale=1e6, rate=True)  # 1 Mbp per call -> Mbp/s
    assert f["value"] == f["median"] == pytest.approx(0.5) and f["min"] == pytest.approx(0.25)
    assert f["max"] == pytest.approx(1.0) and f["repeats"] == 3
    g = t.fields(per=1000, scale=1e6)  # us per token of 1000 tokens
    assert g["value"] == pytest.approx(2000.0) and g["min"] == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="clock"):
        interleaved({"a": lambda: None}, clock="gpu")


def test_peak_memory_of_torch_tensors_is_exact():
    def f():  # peak: a and b live together (8 MiB); a is freed before c
        a = torch.ones(1024, 1024)
        b = a * 2
        del a
        return b + 1
    keep = torch.zeros(4096, 1024)  # live before the call: not counted
    b, method = peak_memory(f)
    assert method == "torch" and b == pytest.approx(8 * 2**20, rel=0.01) and keep.numel()


def test_peak_memory_other_methods():
    n = 64 * 2**20
    b, method = peak_memory(lambda: np.ones(n // 8), method="tracemalloc")
    assert method == "tracemalloc" and n <= b < 1.1 * n
    b, method = peak_memory(lambda: torch.ones(n // 4).sum(), method="rss")
    assert method in ("rss", "maxrss") and b >= 0
    with pytest.raises(ValueError, match="unknown method 'psychic'"):
        peak_memory(lambda: None, method="psychic")


def test_pinned_threads_restores():
    old = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
