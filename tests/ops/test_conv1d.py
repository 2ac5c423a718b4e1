"""causal_conv1d: backends against the float64 reference, which is checked against nn.Conv1d.

Tolerances: :data:`tests._numerics.TOL` per dtype (fp32 accumulation of <= 4 taps; half precision
is bounded by the output's rounding); gradients summed over B*L terms scale atol by max|ref| + 1.
"""

from __future__ import annotations

import pytest
import torch

from omicskern.ops import backends
from omicskern.ops.conv1d import causal_conv1d, causal_conv1d_ref
from tests._numerics import assert_close

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(backends.triton_probe(DEV) is not None, reason="Triton kernels cannot run here")
# atol of gradients of y.sum() over ~1e4 terms (fp32): 1e-4
GRAD_SUM_ATOL = 1e-4


def _skip_unless_runs(backend):
    if backend == "triton" and backends.triton_probe(DEV) is not None:
        pytest.skip("Triton kernels cannot run here")


def make(B, C, L, K, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, L, generator=g).to(dtype)
    w = (torch.randn(C, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    if requires_grad:
        for t in (x, w, b):
            t.requires_grad_(True)
    return x, w, b


@pytest.mark.parametrize("K", [2, 3, 4])
def test_reference_is_hyena_short_filter(K):
    """The definition equals HyenaDNA's nn.Conv1d(padding=K-1)[..., :L]."""
    x, w, b = make(2, 6, 17, K, F64)
    conv = torch.nn.Conv1d(6, 6, K, padding=K - 1, groups=6).double()
    with torch.no_grad():
        conv.weight.copy_(w[:, None])
        conv.bias.copy_(b)
        want = conv(x)[..., :17]
    assert_close(causal_conv1d_ref(x, w, b), want)


CASES = [
    pytest.param(2, 5, 1, 3, F32, id="B2-C5-L1-K3-fp32"),
    pytest.param(2, 5, 3, 4, F32, id="B2-C5-L3-K4-fp32"),
    pytest.param(1, 7, 17, 2, F32, id="B1-C7-L17-K2-fp32"),
    pytest.param(2, 3, 113, 3, F64, id="B2-C3-L113-K3-fp64"),
    pytest.param(2, 9, 300, 4, F16, id="B2-C9-L300-K4-fp16"),
    pytest.param(2, 9, 300, 3, BF16, id="B2-C9-L300-K3-bf16"),
]


def _check_backend(backend, B, C, L, K, dtype, activation):
    _skip_unless_runs(backend)
    x, w, b = make(B, C, L, K, dtype, seed=L + K, requires_grad=True)
    y = causal_conv1d(x, w, b, activation=activation, backend=backend)
    assert y.dtype == dtype and y.shape == (B, C, L)
    ref = causal_conv1d_ref(x, w, b, activation)
    assert_close(y, ref, what="y")
    dy = torch.randn(B, C, L, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(y, (x, w, b), dy)
    want = torch.autograd.grad(ref, (x, w, b), dy.double())
    for name, gt, wt in zip(("dx", "dw", "db"), got, want):
        # dw, db sum over B*L terms
        assert_close(gt, wt, dtype=dtype, scale=wt.abs().max().item() + 1.0, what=name)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("B,C,L,K,dtype", CASES)
def test_torch_backend(B, C, L, K, dtype, activation):
    _check_backend("torch", B, C, L, K, dtype, activation)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("B,C,L,K,dtype", CASES)
def test_triton_backend(B, C, L, K, dtype, activation):
    """Interpreter on CPU (CUDA when present)."""
    _check_backend("triton", B, C, L, K, dtype, activation)


@needs_triton
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_triton_multi_block_no_bias(bias):
    """C, L > one tile so the per-tile partial sums and the dx halo across tiles matter."""
    x, w, b = make(1, 70, 2500, 4, F32, seed=9, requires_grad=True)  # 2 channel x 3 position tiles
    b = b if bias else None
    y = causal_conv1d(x, w, b, activation="silu", backend="triton")
    ref = causal_conv1d_ref(x, w, b, "silu")
    assert_close(y, ref, what="y")
    params = (x, w, b) if bias else (x, w)
    got = torch.autograd.grad(y.sum(), params)
    want = torch.autograd.grad(ref.sum(), params)
    for name, gt, wt in zip(("dx", "dw", "db"), got, want):
        assert_close(gt, wt, atol=GRAD_SUM_ATOL, what=name)


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("activation", [None, "silu"])
def test_triton_gpu_bf16(activation):
    x, w, b = (t.cuda() for t in make(8, 1536, 8192, 4, BF16))
    y = causal_conv1d(x, w, b, activation=activation, backend="triton")
    assert_close(y, causal_conv1d_ref(x, w, b, activation))


def test_default_backend_on_cpu_is_torch(monkeypatch):
    from omicskern.ops.conv1d import interface

    monkeypatch.delenv("OMICSKERN_CAUSAL_CONV1D_BACKEND", raising=False)
    monkeypatch.setattr(interface, "causal_conv1d_torch", lambda *a: "torch")
    x, w, _ = make(1, 2, 5, 3, F32)
    assert causal_conv1d(x, w) == "torch"


def test_no_bias():
    x, w, _ = make(2, 4, 20, 3, F32)
    assert_close(causal_conv1d(x, w, backend="torch"), causal_conv1d_ref(x, w))


@pytest.mark.parametrize("kw,match", [
    (dict(x=torch.randn(4, 10), w=torch.randn(4, 3)), r"\[B, C, L\]"),
    (dict(x=torch.randn(1, 4, 10), w=torch.randn(5, 3)), r"weight must be \[C=4, K\]"),
    (dict(x=torch.randn(1, 4, 10), w=torch.randn(4, 9)), "K=9"),
    (dict(x=torch.randn(1, 4, 10), w=torch.randn(4, 3), b=torch.randn(3)), "bias"),
    (dict(x=torch.randn(1, 4, 10), w=torch.randn(4, 3), activation="relu"), "activation"),
])
def test_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        causal_conv1d(kw["x"], kw["w"], kw.get("b"), activation=kw.get("activation"))


@needs_triton
def test_triton_custom_op_opcheck():
    """Schema, fake-tensor shapes and autograd registration of omicskern::causal_conv1d."""
    from omicskern.ops.conv1d.triton import causal_conv1d_op

    x, w, b = make(2, 3, 20, 3, F32, requires_grad=True)
    torch.library.opcheck(causal_conv1d_op, (x, w, b, True))
    torch.library.opcheck(causal_conv1d_op, (x, w, None, False))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_channel_last_view(backend):
    """x as in_proj(u).transpose(1, 2) (Hyena): a [B, C, L] view with unit stride along C."""
    _skip_unless_runs(backend)
    g = torch.Generator().manual_seed(3)
    xl = torch.randn(2, 40, 24, generator=g)  # [B, L, C]
    x = xl.transpose(1, 2).requires_grad_(False)
    assert x.stride(1) == 1
    x = x.detach().requires_grad_(True)
    w = torch.randn(24, 3, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    y = causal_conv1d(x, w, b, activation="silu", backend=backend)
    ref = causal_conv1d_ref(x.detach().contiguous(), w, b, "silu")
    assert_close(y, ref, what="y")
    dy = torch.randn(2, 24, 40, generator=g)
    got = torch.autograd.grad(y, (x, w, b), dy)
    xr = x.detach().contiguous().requires_grad_(True)
    want = torch.autograd.grad(causal_conv1d_ref(xr, w, b, "silu"), (xr, w, b), dy.double())
    for name, gt, wt in zip(("dx", "dw", "db"), got, want):
        assert_close(gt, wt, atol=GRAD_SUM_ATOL, what=name)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("shape", [(0, 3, 10), (2, 0, 10)], ids=["B0", "C0"])
def test_empty(backend, shape):
    x = torch.randn(*shape)
    y = causal_conv1d(x, torch.randn(shape[1], 3), torch.randn(shape[1]), backend=backend)
    assert y.shape == shape
