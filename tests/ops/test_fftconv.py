"""fft_conv: every backend against the float64 reference, which is checked against the definition.

Outputs are compared with :func:`tests._numerics.assert_close` scale-aware (``scale="max"``: the
absolute tolerance is relative to max|ref|, since FFT round-off spreads over the whole signal).
"""

from __future__ import annotations

import pytest
import torch

from omicskern.errors import BackendUnavailableError
from omicskern.ops import backends
from omicskern.ops.fftconv import fast_fft_len, fft_conv, fft_conv_direct_ref, fft_conv_hyenadna_ref, fft_conv_ref
from tests import _numerics

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
# (atol, rtol) per input dtype, atol relative to the output's scale (inputs ~N(0,1), k ~
# N(0,1)/sqrt(L)): the shared table, except fp32, where FFT round-off grows ~ log2(n) eps (2e-5).
# Half precision: the inputs' own rounding dominates (errors are measured against the reference
# fed the SAME rounded inputs, so only fp32 accumulation error and the output's final rounding remain).
TOL = {**_numerics.TOL, F32: (2e-5, 2e-5)}
DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(backends.triton_probe(DEV) is not None, reason="Triton kernels cannot run here")


def make_inputs(B, H, L, dtype, *, causal=True, k_batched=False, bias=True, gate=True, seed=0,
                requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    Lk = L if causal else 2 * L - 1
    u = torch.randn(B, H, L, generator=g)
    k = torch.randn(*((B,) if k_batched else ()), H, Lk, generator=g) / Lk ** 0.5
    b = torch.randn(H, generator=g) if bias else None
    gt = torch.randn(B, H, L, generator=g) if gate else None
    out = [t.to(dtype) if t is not None else None for t in (u, k, b, gt)]
    if requires_grad:
        for t in out:
            if t is not None:
                t.requires_grad_(True)
    return out


def assert_close_scaled(got, ref, dtype, what=""):
    """|got - ref| <= atol * max|ref| + rtol * |ref| elementwise (scale-aware for FFT outputs)."""
    _numerics.assert_close(got, ref, dtype=dtype, tol=TOL, scale="max", what=what)


# ------------------------------------------------------------------------------------------------
def test_fast_fft_len():
    assert fast_fft_len(1) == 2
    assert fast_fft_len(2047) == 2048
    assert fast_fft_len(8193) == 8232  # 2^3 3 7^3 (HyenaDNA would use 8194 = 2 17 241)
    for n in range(1, 3000, 7):
        m = fast_fft_len(n)
        assert m >= n and m % 2 == 0


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "twosided"])
@pytest.mark.parametrize("L", [1, 2, 3, 17, 50])
@pytest.mark.parametrize("k_batched", [False, True], ids=["kH", "kBH"])
def test_reference_matches_definition(L, causal, k_batched):
    u, k, b, g = make_inputs(2, 3, L, F64, causal=causal, k_batched=k_batched, seed=L)
    _numerics.assert_close(fft_conv_ref(u, k, b, g, causal), fft_conv_direct_ref(u, k, b, g, causal))


@pytest.mark.parametrize("B,H,L,dtype,gate", [
    pytest.param(2, 3, 1, F64, True, id="B2-H3-L1-fp64-gate"),
    pytest.param(2, 3, 17, F64, False, id="B2-H3-L17-fp64"),
    pytest.param(1, 4, 113, F64, True, id="B1-H4-L113-fp64-gate"),
    pytest.param(2, 3, 113, F32, True, id="B2-H3-L113-fp32-gate"),  # fp32: TOL[F32]
])
def test_hyenadna_ref_matches_reference(B, H, L, dtype, gate):
    # HyenaDNA's baseline (the benchmarks' yardstick) is the same convolution as fft_conv_ref
    u, k, b, g = make_inputs(B, H, L, dtype, gate=gate, seed=L)
    got = fft_conv_hyenadna_ref(u, k, b, g)
    assert got.dtype == dtype
    ref = fft_conv_ref(u, k, b, g)
    if dtype == F64:
        _numerics.assert_close(got, ref)
    else:
        assert_close_scaled(got, ref, dtype, "hyenadna_ref")


CASES = [
    pytest.param(2, 3, 1, F32, id="B2-H3-L1-fp32"),
    pytest.param(2, 3, 3, F32, id="B2-H3-L3-fp32"),
    pytest.param(2, 3, 17, F64, id="B2-H3-L17-fp64"),
    pytest.param(2, 3, 113, F32, id="B2-H3-L113-fp32"),
    pytest.param(1, 4, 1000, F32, id="B1-H4-L1000-fp32"),
    pytest.param(2, 2, 4097, F32, id="B2-H2-L4097-fp32"),
    pytest.param(2, 3, 1000, F16, id="B2-H3-L1000-fp16"),
    pytest.param(2, 3, 1000, BF16, id="B2-H3-L1000-bf16"),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "twosided"])
@pytest.mark.parametrize("B,H,L,dtype", CASES)
def test_torch_forward(B, H, L, dtype, causal):
    u, k, b, g = make_inputs(B, H, L, dtype, causal=causal, seed=L)
    y = fft_conv(u, k, b, gate=g, causal=causal, backend="torch")
    assert y.dtype == dtype and y.shape == (B, H, L)
    assert_close_scaled(y, fft_conv_ref(u, k, b, g, causal), dtype, "y")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "twosided"])
@pytest.mark.parametrize("k_batched", [False, True], ids=["kH", "kBH"])
@pytest.mark.parametrize("B,H,L,dtype", [c for c in CASES if c.values[2] != 4097])
def test_torch_backward(B, H, L, dtype, causal, k_batched):
    u, k, b, g = make_inputs(B, H, L, dtype, causal=causal, k_batched=k_batched, seed=L + 1,
                             requires_grad=True)
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(7)).to(dtype)
    got = torch.autograd.grad(fft_conv(u, k, b, gate=g, causal=causal, backend="torch"), (u, k, b, g), dy)
    ref = torch.autograd.grad(fft_conv_ref(u, k, b, g, causal), (u, k, b, g), dy.double())
    for name, x, r, t in zip("u k bias gate".split(), got, ref, (u, k, b, g)):
        assert x.dtype == t.dtype and x.shape == t.shape, name
        assert_close_scaled(x, r, dtype, f"d{name}")


@pytest.mark.parametrize("bias,gate", [(False, False), (True, False), (False, True)],
                         ids=["plain", "bias", "gate"])
def test_torch_optional_args_and_partial_grads(bias, gate):
    u, k, b, g = make_inputs(2, 3, 40, F32, bias=bias, gate=gate, seed=3)
    k.requires_grad_(True)  # only k needs a gradient
    y = fft_conv(u, k, b, gate=g, backend="torch")
    assert_close_scaled(y, fft_conv_ref(u, k, b, g), F32, "y")
    (dk,) = torch.autograd.grad(y.sum(), k)
    (rk,) = torch.autograd.grad(fft_conv_ref(u, k, b, g).sum(), k)
    assert_close_scaled(dk, rk, F32, "dk")


def test_torch_large_L():
    """L = 2^18 (B=1, H=2) in fp32 against the fp64 reference, with gradients of u and k."""
    L = 1 << 18
    u, k, b, g = make_inputs(1, 2, L, F32, seed=11, requires_grad=True)
    y = fft_conv(u, k, b, gate=g, backend="torch")
    ref = fft_conv_ref(u, k, b, g)
    assert_close_scaled(y, ref, F32, "y")
    dy = torch.randn(1, 2, L, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(y, (u, k), dy)
    want = torch.autograd.grad(ref, (u, k), dy.double())
    for name, x, r in zip("uk", got, want):
        assert_close_scaled(x, r, F32, f"d{name}")


def test_reference_backend_and_dispatch(monkeypatch):
    u, k, b, g = make_inputs(2, 3, 30, F32, seed=1)
    y = fft_conv(u, k, b, gate=g, backend="reference")
    assert y.dtype == F32
    assert_close_scaled(y, fft_conv_ref(u, k, b, g), F32, "y")
    monkeypatch.setenv("OMICSKERN_FFT_CONV_BACKEND", "reference")
    assert torch.equal(fft_conv(u, k, b, gate=g), y)
    monkeypatch.setenv("OMICSKERN_FFT_CONV_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        fft_conv(u, k)


def test_triton_unavailable_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    u, k, _, _ = make_inputs(1, 2, 8, F32)
    with pytest.raises(BackendUnavailableError, match="triton"):
        fft_conv(u, k, backend="triton")


@pytest.mark.parametrize("args,match", [
    (dict(u=torch.randn(2, 8), k=torch.randn(2, 8)), r"\[B, H, L\]"),
    (dict(u=torch.randn(1, 2, 8), k=torch.randn(2, 7)), r"expected \(2, 8\)"),
    (dict(u=torch.randn(1, 2, 8), k=torch.randn(2, 8), causal=False), r"2L-1"),
    (dict(u=torch.randn(1, 2, 8), k=torch.randn(2, 8), bias=torch.randn(3)), "bias"),
    (dict(u=torch.randn(1, 2, 8), k=torch.randn(2, 8), gate=torch.randn(1, 2, 7)), "gate"),
    (dict(u=torch.randn(1, 2, 0), k=torch.randn(2, 0)), "L=0"),
])
def test_bad_inputs(args, match):
    u, k = args.pop("u"), args.pop("k")
    with pytest.raises(ValueError, match=match):
        fft_conv(u, k, args.pop("bias", None), **args)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        fft_conv(torch.ones(1, 2, 8, dtype=torch.int64), torch.randn(2, 8))


# ------------------------------------------------------------------------------------------------
# Triton backend (interpreter on CPU: small L; GPU-marked: large L in bf16)
# ------------------------------------------------------------------------------------------------
def _skip_unless_runs(backend):
    if backend == "triton" and backends.triton_probe(DEV) is not None:
        pytest.skip("Triton kernels cannot run here")


def _check_triton(B, H, L, dtype, causal, k_batched=False, seed=0, device="cpu"):
    """Forward and all four gradients against the fp64 reference. With a shared k and B > 1 the
    fused kernel packs two batch rows per complex FFT; B = 1 or per-sample k use single rows."""
    u, k, b, g = make_inputs(B, H, L, dtype, causal=causal, k_batched=k_batched, seed=seed)
    u, k, b, g = (t.to(device).requires_grad_(True) for t in (u, k, b, g))
    y = fft_conv(u, k, b, gate=g, causal=causal, backend="triton")
    assert y.dtype == dtype and y.shape == (B, H, L)
    ref = fft_conv_ref(u, k, b, g, causal)
    assert_close_scaled(y, ref, dtype, "y")
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(device)
    got = torch.autograd.grad(y, (u, k, b, g), dy)
    want = torch.autograd.grad(ref, (u, k, b, g), dy.double())
    for name, x, r, t in zip("u k bias gate".split(), got, want, (u, k, b, g)):
        assert x.dtype == t.dtype and x.shape == t.shape, name
        assert_close_scaled(x, r, dtype, f"d{name}")


TRITON_CASES = [
    pytest.param(2, 3, 1, F32, True, False, id="B2-H3-L1-fp32-causal"),
    pytest.param(3, 2, 50, F32, False, False, id="B3-H2-L50-fp32-twosided"),  # odd B: a lone row in the last pair
    pytest.param(2, 3, 3, F32, False, False, id="B2-H3-L3-fp32-twosided"),
    pytest.param(2, 3, 17, F32, True, True, id="B2-H3-L17-fp32-causal-kBH"),
    pytest.param(2, 3, 113, F32, False, False, id="B2-H3-L113-fp32-twosided"),
    pytest.param(2, 3, 113, F16, True, False, id="B2-H3-L113-fp16-causal"),
    pytest.param(1, 2, 113, BF16, True, False, id="B1-H2-L113-bf16-causal"),
    pytest.param(1, 2, 1000, F16, True, False, id="B1-H2-L1000-fp16-causal"),  # fused N = 2048 (fp32 there: test_triton_fp32_grown_plan)
]


@needs_triton
@pytest.mark.parametrize("B,H,L,dtype,causal,k_batched", TRITON_CASES)
def test_triton_fused(B, H, L, dtype, causal, k_batched):
    _check_triton(B, H, L, dtype, causal, k_batched, seed=L)


@needs_triton
@pytest.mark.parametrize("B,H,L,causal,k_batched", [
    pytest.param(2, 1, 300, False, True, id="B2-H1-L300-twosided-kBH"),
    pytest.param(1, 2, 1000, True, False, id="B1-H2-L1000-causal")])
def test_triton_four_step(monkeypatch, B, H, L, causal, k_batched):
    """The large-N path (outer P-point DFT + inner two-level FFT), forced at small N."""
    from omicskern.ops.fftconv import triton as tk

    monkeypatch.setattr(tk, "FUSED_MAX_N", 256)
    assert len(tk.plan(L)["Ps"]) == 1
    _check_triton(B, H, L, F32, causal, k_batched, seed=L)


@needs_triton
def test_triton_four_step_paired_rows(monkeypatch):
    """The large-N path with a shared filter and odd B: rows (0, 1) of each channel in one complex
    transform, row 2 alone in the last pair (forward, du, dgate; dk/dbias from paired spectra
    summed over the batch by the accumulation kernel)."""
    from omicskern.ops.fftconv import triton as tk

    monkeypatch.setattr(tk, "FUSED_MAX_N", 256)
    _check_triton(3, 2, 300, F16, False, seed=7)


# Precision contract of the fp16 / bf16 kernels (docs/fftconv.md): max error against the fp64
# reference <= FACTOR x the max error of torch.fft run in fp32 on the same rounded inputs with the
# result rounded to the input dtype (what HyenaDNA's fftconv returns). Per path: the fused kernel
# rounds operands twice per transform, the multi-level path three times (bf16's 8-bit mantissa
# makes each rounding count; fp16's output rounding dominates).
PRECISION_FACTOR = {(F16, True): 3.0, (F16, False): 3.0, (BF16, True): 6.0, (BF16, False): 16.0}


def _torch_fp32_rounded(u, k, b, g, causal):
    L = u.shape[-1]
    n = 2 * L if causal else 2 * (2 * L - 1)
    kk = k.float().clone()
    kk[..., 0 if causal else L - 1] += b.float()
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(kk, n=n), n=n)
    y = y[..., :L] if causal else y[..., L - 1:2 * L - 1]
    return (y * g.float()).to(u.dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fused,B,L,causal", [
    pytest.param(True, 2, 1000, True, id="fused-B2-L1000-causal"),
    pytest.param(False, 3, 300, False, id="fourstep-B3-L300-twosided")])
def test_triton_half_precision_contract(monkeypatch, dtype, fused, B, L, causal):
    """fp16 runs its real fp16 tl.dot in the interpreter (fp32 accumulation, as the GPU MMA);
    bf16 operands are rounded to bf16 and multiplied in fp32 there (the interpreter's bf16 dot
    is wrong), which is what the bf16 MMA computes."""
    from omicskern.ops.fftconv import triton as tk

    if not fused:
        monkeypatch.setattr(tk, "FUSED_MAX_N", 256)
    assert tk.plan(L)["fused"] == fused
    u, k, b, g = make_inputs(B, 2, L, dtype, causal=causal, seed=L)
    y = fft_conv(u, k, b, gate=g, causal=causal, backend="triton")
    ref = fft_conv_ref(u, k, b, g, causal)
    base = _numerics.max_error(_torch_fp32_rounded(u, k, b, g, causal), ref)
    err = _numerics.max_error(y, ref)
    assert err <= PRECISION_FACTOR[dtype, fused] * base, (err, base)


@needs_triton
def test_triton_two_outer_levels(monkeypatch):
    """Two outer levels (16 x 16 x 256 = 65536), forced at small sizes: the 1M-token layout."""
    from omicskern.ops.fftconv import triton as tk

    monkeypatch.setattr(tk, "FUSED_MAX_N", 256)
    monkeypatch.setattr(tk, "OUTER_MAX_P", 16)
    L = 20000
    assert tk.plan(L)["Ps"] == [16, 16]
    u, k, b, g = make_inputs(1, 1, L, F32, causal=False, seed=5)
    y = fft_conv(u, k, b, gate=g, causal=False, backend="triton")
    assert_close_scaled(y, fft_conv_ref(u, k, b, g, False), F32, "y")


@needs_triton
@pytest.mark.slow
def test_triton_two_outer_levels_grad(monkeypatch):
    from omicskern.ops.fftconv import triton as tk

    monkeypatch.setattr(tk, "FUSED_MAX_N", 256)
    monkeypatch.setattr(tk, "OUTER_MAX_P", 16)
    _check_triton(1, 1, 20000, F32, True, seed=6)


@needs_triton
@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bf16", "fp32"])
def test_triton_plan(dtype):
    import math

    from omicskern.ops.fftconv import triton as tk

    fmax, pmax = tk.fused_max(dtype), tk.outer_max(dtype)
    for e in range(0, 21):
        for L in {(1 << e) - 1 or 1, 1 << e, (1 << e) + 1}:
            if L > tk.MAX_L:
                continue
            pl = tk.plan(L, dtype)
            assert pl["N"] >= 2 * L - 1
            assert pl["N1"] * pl["N2"] == pl["M"] and pl["M"] * math.prod(pl["Ps"]) == pl["N"]
            assert min(pl["N1"], pl["N2"], *pl["Ps"]) >= 16 and max(pl["Ps"], default=0) <= pmax
            assert pl["M"] <= fmax and pl["fused"] == (pl["N"] <= fmax)
            # N grows past the smallest power of two only where no factorization exists
            smallest = max(tk.MIN_N, 1 << (2 * L - 2).bit_length())
            assert pl["N"] == smallest or (dtype == F32 and smallest in (1024, 2048, 32768)), (L, pl)
    assert len(tk.plan(1 << 20)["Ps"]) == 2
    assert tk.plan(1 << 20, F32)["Ps"] == [32, 16, 16]
    assert tk.unsupported_reason((1 << 20) + 1, True) is not None


@needs_triton
@pytest.mark.parametrize("L", [300, 1000], ids=["L300-N1024", "L1000-N2048"])
def test_triton_fp32_grown_plan(L):
    """fp32 at 512 < N < 4096 runs the multi-level path at N = 4096 (no fp32 kernel above
    N = 512 fits sm_90's registers); a larger N than 2L - 1 is still exact."""
    from omicskern.ops.fftconv import triton as tk

    pl = tk.plan(L, F32)
    assert pl["N"] == 4096 and pl["Ps"] == [16] and not pl["fused"]
    _check_triton(2, 1, L, F32, causal=L == 1000, seed=L)


def test_default_backend_on_cpu_is_torch(monkeypatch):
    from omicskern.ops.fftconv.torch import FftConvTorchFn

    calls = []
    monkeypatch.setattr(FftConvTorchFn, "apply", lambda *a: calls.append(1) or a[0])
    u, k, _, _ = make_inputs(1, 2, 8, F32)
    fft_conv(u, k)
    assert calls == [1]


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("B,H,L,causal", [
    pytest.param(4, 64, 4096, True, id="B4-H64-L4096-causal"),
    pytest.param(2, 32, 4097, True, id="B2-H32-L4097-causal"),
    pytest.param(2, 16, 32768, False, id="B2-H16-L32768-twosided"),
    pytest.param(1, 4, 1 << 20, True, id="B1-H4-L1M-causal"),
])
def test_triton_gpu_bf16(B, H, L, causal):
    _check_triton(B, H, L, BF16, causal, seed=3, device="cuda")


@needs_triton
def test_triton_custom_op_opcheck():
    """Schema, fake-tensor shapes and autograd registration of omicskern::fft_conv (torch.compile)."""
    from omicskern.ops.fftconv.triton import fft_conv_op

    u, k, b, g = make_inputs(2, 3, 17, F32, seed=2, requires_grad=True)
    torch.library.opcheck(fft_conv_op, (u, k, b, g, True))


@pytest.mark.parametrize("backend,H", [pytest.param("torch", 128, id="torch-H128"),
                                       pytest.param("triton", 4, id="triton-H4")])
def test_hyenadna_filter_from_fixture(shared_dir, backend, H):
    """A real long filter (HyenaDNA layer 0, decaying, L=1024) with its skip term, on random input."""
    _skip_unless_runs(backend)
    import numpy as np
    from safetensors.torch import load_file

    root = shared_dir / "fixtures/hyenadna_tiny"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    k = torch.from_numpy(np.load(root / "outputs.npz")["layer0_filter_k"]).T.contiguous()[:H]  # [H, L]
    D = load_file(str(root / "model.safetensors"))["backbone.layers.0.mixer.filter_fn.bias"][:H]
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, H, k.shape[-1], generator=g, requires_grad=True)
    gate = torch.randn(2, H, k.shape[-1], generator=g)
    y = fft_conv(u, k, D, gate=gate, backend=backend)
    ref = fft_conv_ref(u, k, D, gate)
    assert_close_scaled(y, ref, F32, "y")
    dy = torch.randn(2, H, k.shape[-1], generator=g)
    assert_close_scaled(torch.autograd.grad(y, u, dy)[0], torch.autograd.grad(ref, u, dy.double())[0], F32, "du")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_strided_inputs(backend):
    """u and gate as channel slices of one [B, 3H, L] projection (Hyena's layout), no copies needed."""
    _skip_unless_runs(backend)
    g = torch.Generator().manual_seed(8)
    B, H, L = 2, 3, 50
    proj = torch.randn(B, 3 * H, L, generator=g)
    gate, _, u = proj.split(H, dim=1)
    assert not u.is_contiguous()
    k = torch.randn(H, L, generator=g) / L ** 0.5
    b = torch.randn(H, generator=g)
    y = fft_conv(u, k, b, gate=gate, backend=backend)
    assert_close_scaled(y, fft_conv_ref(u.contiguous(), k, b, gate.contiguous()), F32, "y")


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("shape", [(0, 3, 10), (2, 0, 10)], ids=["B0", "H0"])
def test_empty(backend, shape):
    u = torch.randn(*shape, requires_grad=True)
    k = torch.randn(shape[1], 10, requires_grad=True)
    y = fft_conv(u, k, gate=torch.randn(*shape), backend=backend)
    assert y.shape == shape
    y.sum().backward()
    assert k.grad is not None and (k.grad == 0).all()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "twosided"])
@pytest.mark.parametrize("k_batched", [False, True], ids=["kH", "kBH"])
def test_torch_row_blocks(monkeypatch, causal, k_batched):
    """The torch path in several (batch x channel) blocks (a tiny block budget) equals the reference."""
    from omicskern.ops.fftconv import torch as torch_backend

    B, H, L = 3, 5, 100
    assert torch_backend.fast_fft_len(2 * L - 1) == 200
    monkeypatch.setattr(torch_backend, "TORCH_CHUNK_BYTES", 3 * 4 * 200 * 2)  # 2 rows per block
    assert sum(len(bl) for bl in torch_backend._blocks(B, H, 200, F32)) == 9  # 3 channel x 3 batch blocks
    u, k, b, g = make_inputs(B, H, L, F32, causal=causal, k_batched=k_batched, seed=12, requires_grad=True)
    y = fft_conv(u, k, b, gate=g, causal=causal, backend="torch")
    ref = fft_conv_ref(u, k, b, g, causal)
    assert_close_scaled(y, ref, F32, "y")
    dy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(y, (u, k, b, g), dy)
    want = torch.autograd.grad(ref, (u, k, b, g), dy.double())
    for name, x, r in zip("u k bias gate".split(), got, want):
        assert_close_scaled(x, r, F32, f"d{name}")
