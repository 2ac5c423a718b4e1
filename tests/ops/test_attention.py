"""Attention: every backend against a float64 reference, outputs and gradients.

Error criterion (FlashAttention's own, :func:`tests._numerics.assert_close` with ``baseline``): in
dtype X, a backend's max error against the float64 reference must be at most 2x the error of the
plain PyTorch path computed in X (``attention_ref`` with ``upcast=False``) plus a small ``atol``
stated per dtype in ``tests._numerics.BASELINE_ATOL``. On CPU the Triton kernels run through the
interpreter (fp32/fp16; its bf16 ``tl.dot`` is broken), at small odd shapes.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from omicskern.errors import BackendUnavailableError
from omicskern.ops import backends
from omicskern.ops.attention import alibi_slopes, attention, attention_ref, choose_backend
from tests._numerics import assert_close

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
TRITON_OK = backends.triton_probe(DEV) is None
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton kernels cannot run here "
                                  "(no CUDA and TRITON_INTERPRET unset)")

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def make_inputs(*, B=None, L=None, lens=None, H=2, Hk=None, D=32, dtype=torch.float32, pad_lens=None,
                device=DEV, seed=0):
    """Padded [B, L, H, D] (optionally right-padded to pad_lens), or packed [T, H, D] for lens."""
    g = torch.Generator().manual_seed(seed)
    Hk = Hk or H
    kw = {}
    if lens is not None:
        T = sum(lens)
        shapes = [(T, H, D), (T, Hk, D), (T, Hk, D)]
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        kw["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32, device=device)
    else:
        shapes = [(B, L, H, D), (B, L, Hk, D), (B, L, Hk, D)]
        if pad_lens is not None:
            kw["key_padding_mask"] = (torch.arange(L)[None, :] < torch.tensor(pad_lens)[:, None]).to(device)
    q, k, v = (torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes)
    return q, k, v, kw


def run(q, k, v, do, **kw):
    """Output and (dq, dk, dv) for one attention call."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), grads


def check_against_reference(q, k, v, layout_kw, *, backend, causal, alibi, dtype, grads=True):
    H = q.shape[-2]
    slopes = alibi_slopes(H).to(q.device) if alibi else None
    kw = dict(causal=causal, alibi_slopes=slopes, **layout_kw)
    g = torch.Generator().manual_seed(1)
    do = torch.randn(q.shape, generator=g).to(device=q.device, dtype=dtype)
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
    ref_out, ref_g = run(q64, k64, v64, do64, backend="reference", **kw)

    def plain(qq, kk, vv):
        return attention_ref(qq, kk, vv, upcast=False, **kw)

    qp, kp, vp = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    p_out = plain(qp, kp, vp)
    p_g = torch.autograd.grad(p_out, (qp, kp, vp), do)
    out, gr = run(q, k, v, do, backend=backend, **kw)
    assert out.dtype == dtype and out.shape == q.shape
    names = ["out", "dq", "dk", "dv"] if grads else ["out"]
    for name, got, base, ref in zip(names, (out, *gr), (p_out, *p_g), (ref_out, *ref_g)):
        assert_close(got, ref, baseline=base, grad=name != "out", what=f"{backend} {name}")
    if "key_padding_mask" in layout_kw:  # padded query rows are exactly 0
        pad = ~layout_kw["key_padding_mask"]
        assert (out[pad] == 0).all()


# -- ALiBi slopes ---------------------------------------------------------------------------


def _slopes_paper(n):
    def pow2(m):
        return [2 ** (-8 / m * (h + 1)) for h in range(m)]

    if math.log2(n).is_integer():
        return pow2(n)
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + pow2(2 * p)[0::2][: n - p]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 24, 32])
def test_alibi_slopes_formula(n):
    s = alibi_slopes(n)
    assert s.dtype == torch.float32 and s.shape == (n,)
    assert_close(s, torch.tensor(_slopes_paper(n), dtype=torch.float32), atol=0, rtol=1e-7)


def test_alibi_slopes_dnabert2_fixture_values():
    # 4 heads, as listed in the DNABERT-2 fixture README; 12 heads = DNABERT-2-117M.
    assert alibi_slopes(4).tolist() == [0.25, 0.0625, 0.015625, 0.00390625]
    s12 = alibi_slopes(12)
    assert s12[:8].tolist() == [2.0 ** -(h + 1) for h in range(8)]
    assert_close(s12[8:], torch.tensor([2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]), atol=0, rtol=1e-7)
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)


# -- Triton kernels (interpreter on CPU) ----------------------------------------------------

fp32, fp16 = torch.float32, torch.float16
TRITON_CASES = [
    # id: (shape kwargs, causal, alibi, dtype)
    pytest.param(dict(B=2, L=17, H=2, D=32), False, False, fp32, id="B2-L17-H2-D32-fp32"),
    pytest.param(dict(B=2, L=1, H=2, D=32), True, True, fp32, id="B2-L1-H2-D32-causal-alibi-fp32"),
    pytest.param(dict(B=2, L=113, H=2, D=64), True, True, fp32, id="B2-L113-H2-D64-causal-alibi-fp32"),
    pytest.param(dict(B=1, L=257, H=2, D=32), False, True, fp16, id="B1-L257-H2-D32-alibi-fp16"),
    pytest.param(dict(B=2, L=113, H=4, Hk=2, D=48), True, False, fp16,
                 id="B2-L113-H4-Hk2-D48pad-causal-fp16"),
    pytest.param(dict(B=1, L=113, H=4, Hk=1, D=16), False, True, fp32, id="B1-L113-H4-Hk1-D16-alibi-fp32"),
    pytest.param(dict(lens=[1, 17, 113], H=2, D=64), False, True, fp32, id="varlen-1,17,113-H2-D64-alibi-fp32"),
    pytest.param(dict(lens=[1, 17, 113], H=4, Hk=2, D=32), True, True, fp16,
                 id="varlen-1,17,113-H4-Hk2-D32-causal-alibi-fp16"),
    pytest.param(dict(lens=[257, 3, 0, 64], H=1, D=32), True, False, fp32,
                 id="varlen-257,3,0,64-H1-D32-causal-fp32"),
    pytest.param(dict(B=2, L=113, pad_lens=[113, 40], H=2, D=32), False, True, fp32,
                 id="B2-L113-mask113,40-H2-D32-alibi-fp32"),
    pytest.param(dict(B=3, L=65, pad_lens=[1, 65, 30], H=2, D=64), True, True, fp16,
                 id="B3-L65-mask1,65,30-H2-D64-causal-alibi-fp16"),
]


@needs_triton
@pytest.mark.parametrize("shape,causal,alibi,dtype", TRITON_CASES)
def test_triton_matches_reference(shape, causal, alibi, dtype):
    q, k, v, kw = make_inputs(dtype=dtype, **shape)
    check_against_reference(q, k, v, kw, backend="triton", causal=causal, alibi=alibi, dtype=dtype)


@needs_triton
def test_triton_padded_mask_equals_varlen():
    """Right-padded batch with a key mask == the same sequences packed (unpad -> varlen -> pad)."""
    lens = [50, 17, 1]
    q, k, v, kw = make_inputs(B=3, L=50, pad_lens=lens, H=2, D=32)
    slopes = alibi_slopes(2)
    out_pad = attention(q, k, v, causal=True, alibi_slopes=slopes, backend="triton", **kw)
    m = kw["key_padding_mask"]
    cu = torch.tensor([0, 50, 67, 68], dtype=torch.int32)
    out_var = attention(q[m], k[m], v[m], cu_seqlens=cu, max_seqlen=50, causal=True,
                        alibi_slopes=slopes, backend="triton")
    assert torch.equal(out_pad[m], out_var)
    assert (out_pad[~m] == 0).all()


@needs_triton
def test_triton_noncontiguous_inputs():
    """q, k, v as strided views of one fused qkv projection (how models call it)."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 33, 3, 2, 32, generator=g)
    q, k, v = qkv.unbind(2)
    out = attention(q, k, v, alibi_slopes=alibi_slopes(2), backend="triton")
    ref = attention_ref(q.double(), k.double(), v.double(), alibi_slopes=alibi_slopes(2))
    assert_close(out, ref, baseline=attention_ref(q, k, v, alibi_slopes=alibi_slopes(2), upcast=False))


@needs_triton
def test_triton_softmax_scale_and_large_logits():
    """Explicit scale, scores of several hundred: the online softmax must not overflow."""
    q, k, v, kw = make_inputs(B=1, L=70, H=2, D=32)
    q = q * 8
    out = attention(q, k, v, softmax_scale=0.5, backend="triton")
    ref = attention_ref(q.double(), k.double(), v.double(), softmax_scale=0.5)
    assert_close(out, ref, atol=1e-5, rtol=0)  # the plain fp32 path is itself ~8e-6 off here


@needs_triton
def test_triton_custom_op_opcheck():
    from omicskern.ops.attention.triton import attention_bwd, attention_fwd

    q, k, v, _ = make_inputs(lens=[3, 17], H=2, Hk=1, D=32)
    cu = torch.tensor([0, 3, 20], dtype=torch.int32, device=DEV)
    sl = alibi_slopes(2).to(DEV)
    torch.library.opcheck(attention_fwd, (q, k, v, cu, sl, 17, True, 0.2))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    torch.library.opcheck(attention_fwd, (qg, kg, vg, cu, None, 17, False, 0.2))
    out, lse = attention_fwd(q, k, v, cu, sl, 17, True, 0.2)
    torch.library.opcheck(attention_bwd, (torch.randn_like(out), q, k, v, out, lse, cu, sl, 17, True, 0.2),
                          test_utils=("test_schema", "test_faketensor"))


@needs_triton
def test_triton_torch_compile_fullgraph():
    q, k, v, _ = make_inputs(B=2, L=17, H=2, D=32)
    slopes = alibi_slopes(2)

    def f(q, k, v):
        return attention(q, k, v, causal=True, alibi_slopes=slopes, backend="triton")

    qc = q.clone().requires_grad_(True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(qc, k, v)
    out.sum().backward()
    qe = q.clone().requires_grad_(True)
    ref = f(qe, k, v)
    ref.sum().backward()
    assert torch.equal(out, ref) and torch.equal(qc.grad, qe.grad)


# -- Every CPU backend against the reference ------------------------------------------------

SDPA_CASES = [
    pytest.param(dict(B=2, L=17, H=2, D=32), False, True, torch.float32, id="B2-L17-H2-D32-alibi-fp32"),
    pytest.param(dict(B=2, L=113, H=4, Hk=2, D=64), True, True, torch.float32,
                 id="B2-L113-H4-Hk2-D64-causal-alibi-fp32"),
    pytest.param(dict(lens=[1, 17, 113], H=2, D=32), True, False, torch.float32, id="varlen-1,17,113-causal-fp32"),
    pytest.param(dict(B=3, L=65, pad_lens=[1, 65, 30], H=2, D=32), False, True, torch.float32,
                 id="B3-L65-mask1,65,30-alibi-fp32"),
    pytest.param(dict(B=2, L=113, H=2, D=32), True, True, torch.float16, id="B2-L113-H2-D32-causal-alibi-fp16"),
    pytest.param(dict(lens=[5, 0, 40], H=2, D=16), False, True, torch.float64, id="varlen-5,0,40-alibi-fp64"),
    pytest.param(dict(B=2, L=40, pad_lens=[0, 40], H=2, D=16), True, True, torch.float64,
                 id="B2-L40-mask0,40-causal-alibi-fp64"),
]


@pytest.mark.parametrize("shape,causal,alibi,dtype", SDPA_CASES)
def test_sdpa_matches_reference(shape, causal, alibi, dtype):
    q, k, v, kw = make_inputs(dtype=dtype, **shape)
    check_against_reference(q, k, v, kw, backend="sdpa", causal=causal, alibi=alibi, dtype=dtype)


def test_reference_fp32_matches_fp64():
    q, k, v, kw = make_inputs(lens=[17, 3], H=2, D=32)
    check_against_reference(q, k, v, kw, backend="reference", causal=True, alibi=True, dtype=torch.float32)


def test_reference_matches_dense_formula():
    """The reference against the formula written out by hand (DNABERT-2 style dense bias)."""
    q, k, v, _ = make_inputs(B=1, L=9, H=3, D=8, dtype=torch.float64)
    sl = alibi_slopes(3).double()
    i = torch.arange(9)
    bias = -sl[:, None, None] * (i[:, None] - i[None, :]).abs()
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8) + bias
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    expect = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
    assert_close(attention_ref(q, k, v, causal=True, alibi_slopes=sl), expect)


def test_dropout_reference_and_sdpa_run():
    q, k, v, _ = make_inputs(B=1, L=17, H=2, D=16)
    for be in ("reference", "sdpa"):
        out = attention(q, k, v, dropout_p=0.5, backend=be)
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert not torch.equal(out, attention(q, k, v, backend=be))


# -- Real data: DNABERT-2 layer-0 projections on the fixture's tokenized DNA ----------------


def test_dnabert2_fixture_attention(shared_dir):
    np = pytest.importorskip("numpy")
    from safetensors.torch import load_file

    fx = shared_dir / "fixtures" / "dnabert2_tiny"
    if not fx.is_dir():
        pytest.skip("dnabert2_tiny fixture missing")
    w = load_file(str(fx / "model.safetensors"))
    inp = np.load(fx / "inputs.npz")
    ids = torch.from_numpy(inp["input_ids"])
    mask = torch.from_numpy(inp["attention_mask"]).bool()
    x = w["bert.embeddings.word_embeddings.weight"][ids] + w["bert.embeddings.token_type_embeddings.weight"][0]
    x = torch.nn.functional.layer_norm(x, (64,), w["bert.embeddings.LayerNorm.weight"],
                                       w["bert.embeddings.LayerNorm.bias"], eps=1e-12)
    qkv = x @ w["bert.encoder.layer.0.attention.self.Wqkv.weight"].T + w["bert.encoder.layer.0.attention.self.Wqkv.bias"]
    B, S = ids.shape
    q, k, v = qkv.view(B, S, 3, 4, 16).unbind(2)
    slopes = alibi_slopes(4)
    # DNABERT-2's own formulation: dense scores + (1 - mask) * -10000 + ALiBi, in float64.
    i = torch.arange(S)
    bias = -slopes.double()[:, None, None] * (i[:, None] - i[None, :]).abs() \
        + (~mask).double()[:, None, None, :] * -10000.0
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / 4.0 + bias
    expect = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v.double())
    backends_here = ["reference", "sdpa"] + (["triton"] if backends.triton_probe("cpu") is None else [])
    for be in backends_here:
        out = attention(q, k, v, alibi_slopes=slopes, key_padding_mask=mask, backend=be)
        assert_close(out[mask], expect[mask], atol=2e-6, rtol=0, what=f"backend {be}")
        assert (out[~mask] == 0).all()


# -- Dispatch and errors --------------------------------------------------------------------


def test_dispatch_cpu_defaults(monkeypatch):
    monkeypatch.delenv("OMICSKERN_ATTENTION_BACKEND", raising=False)
    assert choose_backend(torch.zeros(1, 1, 1, 8)) == "sdpa"
    assert choose_backend(torch.zeros(1, 1, 1, 8, dtype=torch.float64)) == "reference"


def test_dispatch_env_override(monkeypatch):
    monkeypatch.setenv("OMICSKERN_ATTENTION_BACKEND", "reference")
    assert choose_backend(torch.zeros(1, 1, 1, 8)) == "reference"
    monkeypatch.setenv("OMICSKERN_ATTENTION_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        choose_backend(torch.zeros(1, 1, 1, 8))


@pytest.mark.skipif(backends.has_flash_attn(), reason="flash-attn is installed here")
def test_flash_attn_unavailable_raises_with_hint():
    q, k, v, _ = make_inputs(B=1, L=4, H=1, D=16)
    with pytest.raises(BackendUnavailableError, match="pip install"):
        attention(q, k, v, backend="flash_attn")


@pytest.mark.skipif(not backends.has_triton(), reason="triton not installed (see test_triton_optional.py)")
def test_triton_unavailable_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        choose_backend(torch.zeros(1, 1, 1, 8), backend="triton")


@needs_triton
def test_triton_refuses_dropout_and_fp64():
    with pytest.raises(BackendUnavailableError, match="dropout"):
        choose_backend(torch.zeros(1, 1, 1, 8, device=DEV), dropout_p=0.1, backend="triton")
    with pytest.raises(BackendUnavailableError, match="float64"):
        choose_backend(torch.zeros(1, 1, 1, 8, dtype=torch.float64, device=DEV), backend="triton")


@needs_triton
def test_triton_rejects_left_padding():
    q, k, v, _ = make_inputs(B=2, L=8, H=1, D=16)
    m = torch.ones(2, 8, dtype=torch.bool, device=DEV)
    m[1, :3] = False
    with pytest.raises(ValueError, match="row 1 is not right padding"):
        attention(q, k, v, key_padding_mask=m, backend="triton")


@needs_triton
def test_auto_choice_sends_left_padding_to_sdpa(monkeypatch):
    from omicskern.ops.attention import interface

    monkeypatch.delenv("OMICSKERN_ATTENTION_BACKEND", raising=False)
    monkeypatch.setattr(interface, "choose_backend", lambda q, dropout_p=0.0, backend=None: backend or "triton")
    q, k, v, _ = make_inputs(B=2, L=8, H=1, D=16)
    m = torch.ones(2, 8, dtype=torch.bool, device=DEV)
    m[1, :3] = False
    out = attention(q, k, v, key_padding_mask=m, alibi_slopes=alibi_slopes(1))
    ref = attention_ref(q.double(), k.double(), v.double(), key_padding_mask=m, alibi_slopes=alibi_slopes(1))
    assert_close(out, ref, atol=2e-6, rtol=0)
    m[1] = torch.arange(8) < 5  # right padding stays on the chosen backend
    out = attention(q, k, v, key_padding_mask=m)
    assert torch.equal(out, attention(q, k, v, key_padding_mask=m, backend="triton"))


@pytest.mark.parametrize("bad,match", [
    (dict(q=torch.zeros(2, 5, 2, 8), k=torch.zeros(2, 5, 3, 8)), "multiple of Hk"),
    (dict(q=torch.zeros(2, 5, 2, 8), k=torch.zeros(2, 6, 2, 8)), "does not match q"),
    (dict(q=torch.zeros(10, 2, 8)), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32), q=torch.zeros(10, 2, 8)), "end at T=10"),
    (dict(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32), q=torch.zeros(10, 2, 8)), "decreases at sequence 1"),
    (dict(alibi_slopes=torch.ones(3)), r"alibi_slopes must have shape \[H\]"),
    (dict(key_padding_mask=torch.ones(2, 5)), "must be bool"),
    (dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), r"expected \[B, L\]"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(q=torch.zeros(2, 5, 2, 8, dtype=torch.float16)), "share a dtype"),
    (dict(q=torch.zeros(2, 5, 2, 8, dtype=torch.int64)), "dtype torch.int64"),
])
def test_bad_arguments(bad, match):
    args = dict(q=torch.zeros(2, 5, 2, 8), k=None, v=None)
    args.update(bad)
    q = args.pop("q")
    k = args.pop("k")
    if k is None:
        k = torch.zeros(q.shape[:-2] + (2, 8)) if q.dtype.is_floating_point else torch.zeros(q.shape)
    v = args.pop("v") or k.clone()
    with pytest.raises((ValueError, TypeError), match=match):
        attention(q, k, v, backend="reference", **args)


def test_unknown_backend():
    q, k, v, _ = make_inputs(B=1, L=4, H=1, D=16)
    with pytest.raises(ValueError, match="unknown backend"):
        attention(q, k, v, backend="cudnn")


# -- GPU: bf16 at realistic sizes -----------------------------------------------------------

GPU_CASES = [
    pytest.param(dict(B=2, L=1024, H=8, D=64), False, True, id="B2-L1024-H8-D64-alibi-bf16"),
    pytest.param(dict(B=2, L=1000, H=8, D=128), True, False, id="B2-L1000-H8-D128-causal-bf16"),
    pytest.param(dict(B=1, L=2048, H=12, D=64), False, True, id="B1-L2048-H12-D64-alibi-bf16"),
    pytest.param(dict(B=2, L=777, H=8, Hk=2, D=128), True, True, id="B2-L777-H8-Hk2-D128-causal-alibi-bf16"),
    pytest.param(dict(B=2, L=1500, H=4, D=80), False, False, id="B2-L1500-H4-D80pad-bf16"),
    pytest.param(dict(lens=[1, 17, 1023, 2900, 513], H=8, D=64), False, True,
                 id="varlen-1,17,1023,2900,513-H8-D64-alibi-bf16"),
    pytest.param(dict(lens=[3000, 400, 1], H=8, Hk=4, D=128), True, True,
                 id="varlen-3000,400,1-H8-Hk4-D128-causal-alibi-bf16"),
    pytest.param(dict(B=4, L=1024, pad_lens=[1024, 700, 65, 1], H=8, D=64), False, True,
                 id="B4-L1024-mask-H8-D64-alibi-bf16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa", "flash_attn"])
@pytest.mark.parametrize("shape,causal,alibi", GPU_CASES)
def test_gpu_bf16(shape, causal, alibi, backend):
    if backend == "flash_attn" and not backends.has_flash_attn():
        pytest.skip("flash-attn not installed")
    q, k, v, kw = make_inputs(dtype=torch.bfloat16, device="cuda", **shape)
    check_against_reference(q, k, v, kw, backend=backend, causal=causal, alibi=alibi, dtype=torch.bfloat16)


@pytest.mark.gpu
def test_gpu_default_backend_is_fast_path():
    assert choose_backend(torch.zeros(1, 1, 1, 64, device="cuda", dtype=torch.bfloat16)) in ("flash_attn", "triton")


@pytest.mark.gpu
def test_gpu_fp32_triton_matches_reference():
    q, k, v, kw = make_inputs(lens=[700, 33], H=4, D=64, device="cuda")
    check_against_reference(q, k, v, kw, backend="triton", causal=True, alibi=True, dtype=torch.float32)


assert "TRITON_INTERPRET" in os.environ or HAS_CUDA or not TRITON_OK


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="interpreter-only: runs the GPU block table through the interpreter")
@pytest.mark.parametrize("D,lens,sm", [(32, [1, 130, 257], 90), (200, [1, 70], 90), (128, [1, 100], 80)],
                         ids=["D32-sm90", "D200pad-sm90", "D128-sm80"])
def test_triton_gpu_block_config_in_interpreter(monkeypatch, D, lens, sm):
    """The GPU launch tables (e.g. BLOCK_M 128 / BLOCK_N 64 forward: several key blocks per query
    block and a split between unmasked and masked blocks; BLOCK_M < BLOCK_N in dK/dV on sm_80)
    checked on CPU."""
    from omicskern.ops.attention import triton as tri

    fwd, bwd = tri._fwd_config, tri._bwd_config
    monkeypatch.setattr(tri, "_fwd_config", lambda d, interpret, _sm, fp32, alibi=False, causal=False:
                        fwd(d, False, sm, fp32, alibi, causal))
    monkeypatch.setattr(tri, "_bwd_config", lambda d, interpret, _sm, fp32: bwd(d, False, sm, fp32))
    q, k, v, kw = make_inputs(lens=lens, H=2, Hk=1, D=D)
    check_against_reference(q, k, v, kw, backend="triton", causal=True, alibi=True, dtype=torch.float32)
    q, k, v, kw = make_inputs(B=1, L=max(lens) - 1, H=1, D=D, dtype=torch.float16)
    check_against_reference(q, k, v, kw, backend="triton", causal=False, alibi=True, dtype=torch.float16)


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="interpreter-only: runs the GPU block table through the interpreter")
def test_triton_hopper_d128_table_in_interpreter(monkeypatch):
    """The sm_90 D=128 entries without ALiBi: forward 128x128 bidirectional, 128x64 causal (two
    key blocks per query block on the diagonal), dQ 128x64, dK/dV 64x64; fp16, a length that is
    not a multiple of any block."""
    from omicskern.ops.attention import triton as tri

    fwd, bwd = tri._fwd_config, tri._bwd_config
    monkeypatch.setattr(tri, "_fwd_config", lambda d, interpret, _sm, fp32, alibi=False, causal=False:
                        fwd(d, False, 90, fp32, alibi, causal))
    monkeypatch.setattr(tri, "_bwd_config", lambda d, interpret, _sm, fp32: bwd(d, False, 90, fp32))
    assert fwd(128, False, 90, False, False)["BLOCK_N"] == 128
    assert fwd(128, False, 90, False, False, causal=True)["BLOCK_N"] == 64
    q, k, v, kw = make_inputs(lens=[1, 300], H=1, D=128, dtype=torch.float16)
    for causal in (True, False):
        check_against_reference(q, k, v, kw, backend="triton", causal=causal, alibi=False, dtype=torch.float16)


def test_flash_adapter_argument_mapping(monkeypatch):
    """flash-attn cannot be installed here: a stand-in module with flash-attn's signatures, computing
    with the reference, checks the adapter's argument mapping, head-dim padding and unpad/pad."""
    import sys
    import types

    from omicskern.ops.attention.flash import attention_flash

    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        calls.append(("dense", q.shape[-1]))
        assert q.shape[-1] % 8 == 0
        assert alibi_slopes is None or alibi_slopes.dtype == torch.float32
        return attention_ref(q, k, v, causal=causal, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        calls.append(("varlen", q.shape[-1]))
        assert cu_seqlens_q.dtype == torch.int32 and torch.equal(cu_seqlens_q, cu_seqlens_k)
        lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        assert max_seqlen_q == max_seqlen_k == int(lens.max())
        return attention_ref(q, k, v, cu_seqlens=cu_seqlens_q, causal=causal, alibi_slopes=alibi_slopes,
                             softmax_scale=softmax_scale)

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func, fake.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    sl = alibi_slopes(2)
    for shape in (dict(B=2, L=17, H=2, D=20), dict(lens=[1, 17, 30], H=2, Hk=1, D=32),
                  dict(B=2, L=30, pad_lens=[30, 9], H=2, D=12)):
        q, k, v, kw = make_inputs(device="cpu", **shape)
        out = attention_flash(q, k, v, causal=True, alibi_slopes=sl, **kw)
        ref = attention_ref(q.double(), k.double(), v.double(), causal=True, alibi_slopes=sl, **kw)
        assert out.shape == q.shape
        assert_close(out, ref, atol=2e-6, rtol=0)
    assert calls == [("dense", 24), ("varlen", 32), ("varlen", 16)]


# The sm_90 compile check of every launched configuration: tests/ops/test_sm90_compile.py.
