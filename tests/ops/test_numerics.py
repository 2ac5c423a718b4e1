"""The shared criterion in tests/_numerics.py rejects what it should."""

from __future__ import annotations

import pytest
import torch

from tests._numerics import TOL, assert_close


def test_elementwise_bound_and_overrides():
    ref = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    atol, rtol = TOL[torch.float32]
    assert_close((ref + atol).float(), ref)  # |err| = atol <= atol + rtol |ref|
    with pytest.raises(AssertionError, match="1/3 elements off"):
        assert_close(ref.float() + torch.tensor([0.0, 0.0, 2 * atol]), ref)
    with pytest.raises(AssertionError):
        assert_close((ref + atol).float(), ref, atol=atol / 2, rtol=0)  # a tighter override applies
    assert_close(ref * 1.001, ref, dtype=torch.float32, atol=0, rtol=2e-3)
    with pytest.raises(AssertionError, match="scale"):
        assert_close(ref * 1.01, ref, dtype=torch.float64, rtol=0, atol=1e-3, scale="max")


def test_baseline_criterion():
    ref = torch.zeros(4, dtype=torch.float64)
    base = torch.tensor([1e-3, 0, 0, 0], dtype=torch.float16)
    got = torch.tensor([0, 2e-3, 0, 0], dtype=torch.float16)  # 2x the plain error (+ atol)
    assert_close(got, ref, baseline=base)
    with pytest.raises(AssertionError, match="plain"):
        assert_close(got * 1.2, ref, baseline=base)


def test_shape_and_finiteness():
    ref = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(2), ref)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(torch.tensor([0.0, float("nan"), 0.0]), ref)
