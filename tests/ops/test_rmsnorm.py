"""rms_norm (+ fused residual add): backends against the float64 definition, which is checked
against the formula of mamba_ssm's Triton kernel written out (``x += res; rstd = 1/sqrt(sum x^2 / C
+ eps); y = x rstd w``). Tolerances: tests._numerics.TOL per dtype; gradients of weight sum over
rows, so their atol scales with max|ref|."""

from __future__ import annotations

import pytest
import torch

from omicskern.ops import backends
from omicskern.ops.rmsnorm import rms_norm, rms_norm_ref
from tests._numerics import assert_close

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _skip_unless_runs(backend):
    if backend == "triton" and backends.triton_probe(DEV) is not None:
        pytest.skip("Triton kernels cannot run here")


def make(shape, dtype, seed=0, residual=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(dtype).requires_grad_(True)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(dtype).requires_grad_(True)
    r = torch.randn(*shape, generator=g).to(dtype).requires_grad_(True) if residual else None
    return x, w, r


def test_reference_is_the_kernel_formula():
    x, w, r = make((3, 7, 33), F64)
    s = x + r
    rstd = 1 / torch.sqrt((s * s).sum(-1, keepdim=True) / 33 + 1e-5)
    out, res = rms_norm_ref(x, w, r, 1e-5, return_residual=True)
    assert_close(out, s * rstd * w)
    assert_close(res, s)


CASES = [
    pytest.param((1, 1), F32, id="R1-C1-fp32"),
    pytest.param((2, 13, 64), F32, id="R26-C64-fp32"),
    pytest.param((5, 129), F64, id="R5-C129-fp64"),
    pytest.param((3, 37, 128), F16, id="R111-C128-fp16"),
    pytest.param((3, 37, 96), BF16, id="R111-C96-bf16"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
@pytest.mark.parametrize("shape,dtype", CASES)
def test_backend(backend, shape, dtype, residual):
    _skip_unless_runs(backend)
    x, w, r = make(shape, dtype, seed=shape[-1], residual=residual)
    out, s = rms_norm(x, w, r, 1e-5, return_residual=True, backend=backend)
    rout, rs = rms_norm_ref(x, w, r, 1e-5, return_residual=True)
    assert out.dtype == dtype and s.dtype == dtype
    assert_close(out, rout, what="out")
    assert_close(s, rs, what="residual")
    g = torch.Generator().manual_seed(1)
    dy, ds = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    params = (x, w, r) if residual else (x, w)
    got = torch.autograd.grad([out, s], params, [dy, ds])
    want = torch.autograd.grad([rout, rs], params, [dy.double(), ds.double()])
    for name, a, b in zip(("dx", "dw", "dres"), got, want):
        assert_close(a, b, dtype=dtype, scale=b.abs().max().item() + 1.0, what=name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_only_and_fp32_residual(backend):
    _skip_unless_runs(backend)
    x, w, r = make((4, 50), F16, seed=3)
    out = rms_norm(x, w, backend=backend)
    assert_close(out, rms_norm_ref(x, w))
    _, s = rms_norm(x, w, r, return_residual=True, residual_dtype=F32, backend=backend)
    assert s.dtype == F32
    assert_close(s, x.double() + r.double(), dtype=F32)


@pytest.mark.parametrize("kw,match", [
    (dict(w=torch.ones(5)), r"weight has shape \(5,\), expected \(4,\)"),
    (dict(r=torch.ones(3, 5)), r"residual has shape"),
])
def test_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        rms_norm(torch.ones(3, 4), kw.get("w", torch.ones(4)), kw.get("r"))
