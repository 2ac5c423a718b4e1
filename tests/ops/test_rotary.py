"""Rotary embeddings: Triton kernel vs the reference vs a hand-written float64 formula, both
conventions, padded/packed layouts, offsets, partial rotary dims, gradients; NT-v2 fixture tables.

Tolerances (:func:`tests._numerics.assert_close` with this file's tighter ``TOL``): the op is a
2x2 rotation per pair computed in float32, so against float64 the error is the output dtype's
rounding, half an ulp: (atol, rtol) fp32 (2e-6, 1e-6), fp16 (1e-3, 2**-11), bf16 (1e-2, 2**-8).
"""

from __future__ import annotations

import pytest
import torch

from omicskern.errors import BackendUnavailableError
from omicskern.ops import backends
from omicskern.ops.rotary import apply_rotary, apply_rotary_ref, rotary_cos_sin
from omicskern.ops.rotary.interface import choose_backend
from tests._numerics import assert_close

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
needs_triton = pytest.mark.skipif(backends.triton_probe(DEV) is not None,
                                  reason="Triton kernels cannot run here")
TOL = {torch.float32: (2e-6, 1e-6), torch.float16: (1e-3, 2**-11), torch.bfloat16: (1e-2, 2**-8),
       torch.float64: (1e-12, 0)}


def rope_formula(x, cos, sin, pos, interleaved):
    """Independent float64 statement of the rotation, using the given tables (checked elsewhere).
    x: [..., P, H, D]; pos: [..., P] row positions into cos/sin [*, R/2]."""
    x = x.double()
    R = 2 * cos.shape[-1]
    c, s = cos.double().cpu()[pos][..., None, :], sin.double().cpu()[pos][..., None, :]
    out = x.clone()
    for j in range(R // 2):
        ia, ib = (2 * j, 2 * j + 1) if interleaved else (j, j + R // 2)
        a, b = x[..., ia], x[..., ib]
        out[..., ia] = a * c[..., j] - b * s[..., j]
        out[..., ib] = a * s[..., j] + b * c[..., j]
    return out


CASES = [
    pytest.param(dict(B=2, L=17, H=3, D=32, R=32), False, torch.float32, id="B2-L17-H3-D32-half-fp32"),
    pytest.param(dict(B=2, L=17, H=3, D=32, R=32), True, torch.float32, id="B2-L17-H3-D32-interleaved-fp32"),
    pytest.param(dict(B=1, L=113, H=2, D=64, R=16), False, torch.float16, id="B1-L113-H2-D64-R16-half-fp16"),
    pytest.param(dict(B=1, L=113, H=2, D=48, R=24), True, torch.float16, id="B1-L113-H2-D48-R24-interleaved-fp16"),
    pytest.param(dict(B=3, L=1, H=1, D=16, R=16), False, torch.float32, id="B3-L1-H1-D16-half-fp32"),
]


def _backends():
    return ["reference"] + (["triton"] if backends.triton_probe(DEV) is None else [])


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("shape,interleaved,dtype", CASES)
def test_padded_matches_formula(shape, interleaved, dtype, backend):
    if backend not in _backends():
        pytest.skip("triton unavailable")
    B, L, H, D, R = (shape[k] for k in "BLHDR")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, H, D, generator=g).to(DEV, dtype)
    offs = torch.tensor([0, 5, 2][:B], device=DEV)
    cos, sin = rotary_cos_sin(L + 8, R, device=DEV)
    for off in (0, 3, offs):
        out = apply_rotary(x, cos, sin, interleaved=interleaved, seqlen_offset=off, backend=backend)
        pos = torch.arange(L)[None, :] + (off.cpu()[:, None] if isinstance(off, torch.Tensor) else off)
        want = rope_formula(x.cpu(), cos, sin, pos.expand(B, L), interleaved)
        assert out.dtype == dtype and out.shape == x.shape
        assert_close(out.cpu(), want, tol=TOL)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_varlen_positions_restart(backend, interleaved):
    if backend not in _backends():
        pytest.skip("triton unavailable")
    lens = [1, 17, 113, 0, 5]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(lens), 2, 32, generator=g).to(DEV)
    cu = torch.tensor([0, 1, 18, 131, 131, 136], dtype=torch.int32, device=DEV)
    cos, sin = rotary_cos_sin(120, 32, device=DEV)
    out = apply_rotary(x, cos, sin, interleaved=interleaved, cu_seqlens=cu, backend=backend)
    assert torch.equal(out, apply_rotary(x, cos, sin, interleaved=interleaved, cu_seqlens=cu,
                                         max_seqlen=113, backend=backend))
    pos = torch.cat([torch.arange(n) for n in lens])
    want = rope_formula(x.cpu()[:, None], cos, sin, pos[:, None], interleaved)[:, 0]
    assert_close(out.cpu(), want, atol=2e-6, rtol=0)


@needs_triton
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_triton_gradient_is_inverse_rotation(interleaved):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 33, 2, 32, generator=g).to(DEV).requires_grad_(True)
    cos, sin = rotary_cos_sin(40, 24, device=DEV)
    dy = torch.randn(x.shape, generator=g).to(DEV)
    gx = torch.autograd.grad(apply_rotary(x, cos, sin, interleaved=interleaved, backend="triton"), x, dy)[0]
    x64 = x.detach().double().requires_grad_(True)
    gr = torch.autograd.grad(apply_rotary_ref(x64, cos, sin, interleaved=interleaved), x64, dy.double())[0]
    assert_close(gx, gr, atol=2e-6, rtol=0)


@needs_triton
def test_triton_opcheck_and_compile():
    from omicskern.ops.rotary.triton import rotary

    x = torch.randn(20, 2, 16, device=DEV)
    cos, sin = rotary_cos_sin(20, 16, device=DEV)
    cu = torch.tensor([0, 3, 20], dtype=torch.int32, device=DEV)
    offs = torch.zeros(2, dtype=torch.int32, device=DEV)
    torch.library.opcheck(rotary, (x.requires_grad_(True), cos, sin, cu, offs, 17, False, False))
    xb = torch.randn(2, 10, 2, 16, device=DEV, requires_grad=True)
    f = torch.compile(lambda t: apply_rotary(t, cos, sin, interleaved=True, backend="triton"),
                      fullgraph=True, backend="aot_eager")
    out = f(xb)
    out.sum().backward()
    xe = xb.detach().clone().requires_grad_(True)
    ref = apply_rotary(xe, cos, sin, interleaved=True, backend="triton")
    ref.sum().backward()
    assert torch.equal(out, ref) and torch.equal(xb.grad, xe.grad)


@needs_triton
def test_triton_short_table_gives_nan_not_garbage():
    """An undersized cos/sin table (unchecked on GPU to avoid a sync) must poison, not read junk."""
    from omicskern.ops.rotary.triton import apply_rotary_triton

    cos, sin = rotary_cos_sin(4, 16, device=DEV)
    x = torch.ones(1, 6, 1, 16, device=DEV)
    out = apply_rotary_triton(x, cos, sin)
    assert torch.isfinite(out[0, :4]).all() and torch.isnan(out[0, 4:]).all()


def test_nt_v2_fixture_tables(shared_dir):
    """NT-v2's stored inv_freq and its cat(angle, angle) cos/sin tables == rotary_cos_sin."""
    from safetensors.torch import load_file

    fx = shared_dir / "fixtures" / "nt_v2_tiny" / "model.safetensors"
    if not fx.is_file():
        pytest.skip("nt_v2_tiny fixture missing")
    inv_freq = load_file(str(fx))["esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq"]
    cos, sin = rotary_cos_sin(600, 16)
    angle = torch.outer(torch.arange(600, dtype=inv_freq.dtype), inv_freq)
    assert torch.equal(cos, angle.cos()) and torch.equal(sin, angle.sin())
    ref_tables = rotary_cos_sin(600, 16, dtype=torch.float64)
    want_angle = torch.outer(torch.arange(600, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, 16, 2) / 16.0))
    assert_close(ref_tables[0], want_angle.cos(), atol=1e-4, rtol=0)  # fp32 angles
    # NT-v2's rope(t) = t * cos(cat) + rotate_half(t) * sin(cat), written exactly as the README does.
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 600, 4, 16, generator=g)
    emb = torch.cat((angle, angle), dim=-1)
    t1, t2 = q.chunk(2, dim=-1)
    want = q * emb.cos()[None, :, None] + torch.cat((-t2, t1), dim=-1) * emb.sin()[None, :, None]
    for be in _backends():
        assert_close(apply_rotary(q, cos, sin, backend=be), want, atol=1e-6, rtol=0, what=be)


def test_errors(monkeypatch):
    x = torch.zeros(2, 5, 2, 16)
    cos, sin = rotary_cos_sin(8, 16)
    with pytest.raises(ValueError, match="rows of cos/sin"):
        apply_rotary(x, cos, sin, seqlen_offset=4)
    with pytest.raises(ValueError, match=r"must be in \[2, D=16\]"):
        apply_rotary(x, *rotary_cos_sin(8, 32))
    with pytest.raises(ValueError, match=r"\[T, H, D\] with cu_seqlens"):
        apply_rotary(x, cos, sin, cu_seqlens=torch.tensor([0, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="rise from 0 to T=7"):
        apply_rotary(torch.zeros(7, 2, 16), cos, sin, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="needs 9 rows"):
        apply_rotary(torch.zeros(9, 2, 16), cos, sin, cu_seqlens=torch.tensor([0, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen=3 is below"):
        apply_rotary(torch.zeros(7, 2, 16), cos, sin, cu_seqlens=torch.tensor([0, 7], dtype=torch.int32),
                     max_seqlen=3)
    with pytest.raises(ValueError, match="positive even"):
        rotary_cos_sin(8, 15)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not HAS_CUDA and backends.has_triton():  # without triton: see test_triton_optional.py
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
            apply_rotary(x, cos, sin, backend="triton")
    monkeypatch.delenv("OMICSKERN_ROTARY_BACKEND", raising=False)
    assert choose_backend(x) == ("triton" if HAS_CUDA else "reference")


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_gpu_bf16_realistic(interleaved):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2048, 16, 128, generator=g).to("cuda", torch.bfloat16).requires_grad_(True)
    cos, sin = rotary_cos_sin(4096, 128, device="cuda")
    out = apply_rotary(x, cos, sin, interleaved=interleaved, seqlen_offset=1000, backend="triton")
    ref = apply_rotary_ref(x.detach().double(), cos, sin, interleaved=interleaved, seqlen_offset=1000)
    assert_close(out, ref, tol=TOL)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
