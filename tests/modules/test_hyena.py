"""HyenaOperator: HyenaDNA checkpoint layout and numerics, order-N recurrence, bidirectional option."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omicskern.modules import HyenaOperator
from omicskern.ops import backends

FIXTURE = "fixtures/hyenadna_tiny"


# --------------------------------------------------------------------------------------------
# An independent pure-torch re-derivation of HyenaDNA's mixer (float64), written from the paper's
# and the reference's equations: filter MLP over features, decay, 2L-FFT conv, D skip, gates.
# --------------------------------------------------------------------------------------------
def features_f64(emb_dim, l_max, L):
    i = torch.arange(l_max, dtype=torch.float64)
    t = i / (l_max - 1)
    w = 2 * math.pi * i / l_max
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
    z = torch.cat([t[:, None], torch.cos(f * w[:, None]), -torch.sin(f * w[:, None])], dim=-1)
    return z[:L], t[:L, None]


def hyena_mixer_f64(sd, u, *, order=2, emb_dim=5, l_max=1026, shift=0.05, bidirectional_rev=None):
    p = {k: v.double() for k, v in sd.items()}
    B, L, d = u.shape
    x = u.double() @ p["in_proj.weight"].T + p["in_proj.bias"]
    x = x.transpose(1, 2)
    x = F.conv1d(x, p["short_filter.weight"], p["short_filter.bias"], padding=2,
                 groups=x.shape[1])[..., :L]
    xs = list(x.split(d, dim=1))
    v = xs.pop()
    z, t = features_f64(emb_dim, l_max, L)
    freq = p["filter_fn.implicit_filter.1.freq"]
    h = torch.sin(freq * (z @ p["filter_fn.implicit_filter.0.weight"].T + p["filter_fn.implicit_filter.0.bias"]))
    for i in (2, 4):
        h = torch.sin(freq * (h @ p[f"filter_fn.implicit_filter.{i}.weight"].T + p[f"filter_fn.implicit_filter.{i}.bias"]))
    h = h @ p["filter_fn.implicit_filter.6.weight"].T
    deltas = p["filter_fn.modulation.deltas"].reshape(-1)
    h = h * (torch.exp(-t * deltas.abs()) + shift)  # [L, (order-1) d]
    k = h.T.reshape(order - 1, d, L)
    D = p["filter_fn.bias"].reshape(order - 1, d)
    n = 2 * L
    for o in range(order - 1):
        v = v * xs[order - 1 - o]
        y = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k[o], n=n), n=n)[..., :L]
        v = y + D[o][:, None] * v
    y = (v * xs[0]).transpose(1, 2)
    return y @ p["out_proj.weight"].T + p["out_proj.bias"]


@pytest.fixture(scope="module")
def fixture(shared_dir):
    from safetensors.torch import load_file

    root = shared_dir / FIXTURE
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    sd = load_file(str(root / "model.safetensors"))
    cfg = json.loads((root / "config.json").read_text())
    out = np.load(root / "outputs.npz")
    return sd, cfg, out


def layer_sd(sd, i):
    pre = f"backbone.layers.{i}.mixer."
    return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}


def make_op(cfg, **kw):
    lc = cfg["layer"]
    return HyenaOperator(cfg["d_model"], l_max=lc["l_max"], filter_order=lc["filter_order"],
                         emb_dim=lc["emb_dim"], w=lc["w"], modulate=lc["modulate"], **kw)


@pytest.mark.parametrize("layer", [0, 1])
def test_checkpoint_loads_strict(fixture, layer):
    sd, cfg, _ = fixture
    op = make_op(cfg)
    msd = layer_sd(sd, layer)
    assert sorted(op.state_dict()) == sorted(msd)
    for k, v in op.state_dict().items():
        assert tuple(v.shape) == tuple(msd[k].shape), k
    op.load_state_dict(msd, strict=True)
    # the three Sin slots share one parameter, as in HyenaDNA
    f = op.filter_fn.implicit_filter
    assert f[1].freq is f[3].freq is f[5].freq


def test_buffers_recomputed_bit_identical(fixture):
    """z, t and deltas are rebuilt from the config, exactly as the checkpoint stores them."""
    sd, cfg, _ = fixture
    fresh = make_op(cfg).state_dict()
    msd = layer_sd(sd, 0)
    for name in ("filter_fn.pos_emb.z", "filter_fn.pos_emb.t", "filter_fn.modulation.deltas"):
        assert torch.equal(fresh[name], msd[name]), name


def test_filter_matches_fixture(fixture):
    """layers[0].mixer.filter_fn.filter(1024)[0] from the reference run; atol 1e-5 (README)."""
    sd, cfg, out = fixture
    op = make_op(cfg)
    op.load_state_dict(layer_sd(sd, 0))
    with torch.no_grad():
        k = op.filter_fn.filter(1024)[0]
    torch.testing.assert_close(k, torch.from_numpy(out["layer0_filter_k"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("L", [pytest.param(1024, id="L1024"), pytest.param(777, id="L777"),
                               pytest.param(33, id="L33"), pytest.param(1, id="L1")])
def test_forward_matches_rederivation(fixture, L):
    """fp32 module vs the float64 re-derivation; atol/rtol 1e-4 (fixture README's fp32 tolerance)."""
    sd, cfg, _ = fixture
    op = make_op(cfg)
    msd = layer_sd(sd, 1)
    op.load_state_dict(msd)
    u = torch.randn(2, L, cfg["d_model"], generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        y = op(u)
    ref = hyena_mixer_f64(msd, u, emb_dim=cfg["layer"]["emb_dim"], l_max=cfg["layer"]["l_max"])
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)


def _random_op(order=2, d=16, l_max=64, **kw):
    torch.manual_seed(0)
    op = HyenaOperator(d, l_max=l_max, order=order, filter_order=32, emb_dim=5, w=10, **kw)
    with torch.no_grad():  # nonzero biases so that bias bugs show
        for p in op.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return op


def test_order3_matches_rederivation():
    op = _random_op(order=3).double()
    u = torch.randn(2, 50, 16, dtype=torch.float64)
    ref = hyena_mixer_f64(op.state_dict(), u, order=3, emb_dim=5, l_max=64)
    # the module's positional buffers are float32 (as in HyenaDNA's checkpoints); the re-derivation
    # builds them in float64: ~1e-6 apart, hence atol 1e-5
    torch.testing.assert_close(op(u), ref, atol=1e-5, rtol=0)


def test_backward_and_backends_agree():
    """Gradients flow to every parameter; fft backend 'reference' (fp64) vs 'torch' (fp32)."""
    op = _random_op()
    u = torch.randn(2, 40, 16, requires_grad=True)
    y = op(u)
    y.square().sum().backward()
    for name, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    op_ref = _random_op(fft_backend="reference", conv_backend="reference")
    torch.testing.assert_close(op(u), op_ref(u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_bidirectional(tied):
    op = _random_op(bidirectional=True, bidirectional_tied=tied).double()
    assert ("filter_fn_rev.implicit_filter.0.weight" in op.state_dict()) == (not tied)
    L = 30
    u = torch.randn(1, L, 16, dtype=torch.float64, requires_grad=True)
    y = op(u)
    # the output at t=0 depends on the future (a causal operator's would not)
    (g,) = torch.autograd.grad(y[0, 0].sum(), u)
    assert g[0, 1:].abs().sum() > 0
    # explicit two-sided sum for the long conv, built from the filters
    k = op.long_filters(L)[0]  # [d, 2L-1]
    kf = op.filter_fn.filter(L)[0].T
    kr = kf if tied else op.filter_fn_rev.filter(L)[0].T
    assert torch.equal(k[:, L - 1:], kf)
    assert torch.equal(k[:, :L - 1].flip(-1), kr[:, :L - 1])  # lag -d uses k_rev[d-1]


def test_bad_inputs():
    op = _random_op()
    with pytest.raises(ValueError, match="exceeds l_max"):
        op(torch.randn(1, 65, 16))
    with pytest.raises(ValueError, match=r"\[B, L, 16\]"):
        op(torch.randn(1, 10, 8))


@pytest.mark.skipif(not backends.has_triton(), reason="triton not installed")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_triton_backends_match_torch(bidirectional):
    """The operator on the Triton kernels (interpreter on CPU) equals the torch path, grads too."""
    op = _random_op(d=16, l_max=64, bidirectional=bidirectional)
    u = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(4))
    ref = op(u)
    (gref,) = torch.autograd.grad(ref.square().sum(), op.filter_fn.implicit_filter[0].weight)
    op.fft_backend = op.conv_backend = "triton"
    y = op(u)
    (g,) = torch.autograd.grad(y.square().sum(), op.filter_fn.implicit_filter[0].weight)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, gref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("L", [1024, 8192], ids=["L1024-fused", "L8192-multilevel"])
def test_gpu_triton_vs_torch(L):
    """On CUDA the default (Triton) kernels match the torch.fft path in fp32, forward and grads."""
    op = _random_op(d=128, l_max=L).cuda()
    u = torch.randn(2, L, 128, device="cuda", requires_grad=True)
    y = op(u)
    (g,) = torch.autograd.grad(y.square().sum(), u)
    op.fft_backend = op.conv_backend = "torch"
    y_ref = op(u)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), u)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g, g_ref, atol=1e-3, rtol=1e-3)


def test_torch_compile_fullgraph():
    """The operator traces as one graph (torch path on CPU; custom ops on the Triton path)."""
    op = _random_op(d=16, l_max=64)
    u = torch.randn(2, 40, 16, requires_grad=True)
    ref = op(u)
    y = torch.compile(op, backend="aot_eager", fullgraph=True)(u)
    torch.testing.assert_close(y, ref)
    (g,) = torch.autograd.grad(y.sum(), u)
    (gref,) = torch.autograd.grad(ref.sum(), u)
    torch.testing.assert_close(g, gref)
