"""accelerate() on DNABERT-2's and HyenaDNA's remote-code model structure.

The remote code itself (``bert_layers.py``, ``modeling_hyena.py``) is not vendored here, so these
tests use stand-ins with its class names, attribute names and call contracts, checked first
against the reference fixtures (so the stand-ins compute what the remote code computes), then
accelerated in place.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import omicskern
import omicskern.ops.fftconv as fftconv_mod
from omicskern.models.hf import restore
from omicskern.modules.embeddings import BertEmbeddings
from omicskern.modules.hyena import HyenaFilter as _OmicsHyenaFilter
from omicskern.modules.hyena import HyenaOperator as _OmicsHyenaOperator
from omicskern.modules.mlp import DenseLayerNorm, GatedGeluMLP
from omicskern.ops.attention import alibi_slopes
from omicskern.ops.fftconv import fft_conv_hyenadna_ref
from tests.models._util import backends_on_cpu, fixture_arrays, fixture_weights

# ---- DNABERT-2 stand-in (bert_layers.py's names and signatures; PyTorch attention branch) -------


class BertUnpadSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, hidden // heads
        self.p_dropout = 0.0
        self.Wqkv = nn.Linear(hidden, 3 * hidden)

    def forward(self, hidden_states, cu_seqlens, max_seqlen_in_batch, indices, attn_mask, bias):
        b, s, h, d = cu_seqlens.numel() - 1, max_seqlen_in_batch, self.num_attention_heads, self.attention_head_size
        qkv = self.Wqkv(hidden_states)
        padded = qkv.new_zeros(b * s, qkv.shape[1])
        padded[indices] = qkv
        padded = padded.view(b, s, 3, h, d)
        q, k, v = padded[:, :, 0].permute(0, 2, 1, 3), padded[:, :, 1].permute(0, 2, 3, 1), padded[:, :, 2].permute(0, 2, 1, 3)
        probs = torch.softmax(torch.matmul(q, k) / math.sqrt(d) + bias, dim=-1)
        att = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b * s, h, d)
        return att[attn_mask.flatten() == 1].reshape(-1, h * d)


class BertUnpadAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.self = BertUnpadSelfAttention(hidden, heads)
        self.output = DenseLayerNorm(hidden, hidden, 1e-12)

    def forward(self, input_tensor, cu_seqlens, max_s, subset_idx=None, indices=None, attn_mask=None, bias=None):
        o = self.self(input_tensor, cu_seqlens, max_s, indices, attn_mask, bias)
        if subset_idx is not None:
            return self.output(o[subset_idx], input_tensor[subset_idx])
        return self.output(o, input_tensor)


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, inter):
        super().__init__()
        self.attention = BertUnpadAttention(hidden, heads)
        self.mlp = GatedGeluMLP(hidden, inter)

    def forward(self, hidden_states, cu_seqlens, seqlen, subset_idx=None, indices=None, attn_mask=None, bias=None):
        return self.mlp(self.attention(hidden_states, cu_seqlens, seqlen, subset_idx, indices, attn_mask, bias))


class BertEncoder(nn.Module):
    def __init__(self, hidden, heads, inter, layers):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(hidden, heads, inter) for _ in range(layers)])
        self.num_attention_heads = heads
        self.bias_built = 0

    def rebuild_alibi_tensor(self, size, device=None):
        pos = torch.arange(size)
        self.alibi = (alibi_slopes(self.num_attention_heads)[:, None, None] * -(pos[None] - pos[:, None]).abs())[None]

    def forward(self, hidden_states, attention_mask, output_all_encoded_layers=True, subset_mask=None):
        b, s = hidden_states.shape[:2]
        self.rebuild_alibi_tensor(s)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0 + self.alibi
        self.bias_built += 1
        m = attention_mask.bool().flatten()
        indices = torch.nonzero(m).flatten()
        lens = attention_mask.sum(1)
        cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        h = hidden_states.reshape(b * s, -1)[indices]
        out = []
        n_full = len(self.layer) if subset_mask is None else len(self.layer) - 1
        for layer in list(self.layer)[:n_full]:
            h = layer(h, cu, s, None, indices, attn_mask=attention_mask, bias=bias)
            if output_all_encoded_layers:
                out.append(h)
        if subset_mask is None:
            full = h.new_zeros(b * s, h.shape[1])
            full[indices] = h
            h = full.view(b, s, -1)
        else:
            subset_idx = torch.nonzero(subset_mask[attention_mask.bool()], as_tuple=False).flatten()
            h = self.layer[-1](h, cu, s, subset_idx=subset_idx, indices=indices, attn_mask=attention_mask, bias=bias)
        if not output_all_encoded_layers:
            out.append(h)
        return out


class _RemoteBert(nn.Module):
    def __init__(self, hidden=64, heads=4, inter=256, layers=2, vocab=4096):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, 2, position=False)
        self.encoder = BertEncoder(hidden, heads, inter, layers)

    def forward(self, input_ids, attention_mask, subset_mask=None):
        return self.encoder(self.embeddings(input_ids), attention_mask, output_all_encoded_layers=False,
                            subset_mask=subset_mask)[-1]


class DNABERT2Remote(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = _RemoteBert()

    def forward(self, input_ids, attention_mask, subset_mask=None):
        return self.bert(input_ids, attention_mask, subset_mask)


@pytest.fixture(scope="module")
def dnabert2(shared_dir):
    d = shared_dir / "fixtures/dnabert2_tiny"
    m = DNABERT2Remote().eval()
    sd = {k: v for k, v in fixture_weights(d).items()
          if k.startswith("bert.") and not k.startswith("bert.pooler")}
    m.load_state_dict(sd, strict=True)
    return (m, *fixture_arrays(d))


@pytest.mark.parametrize("backend", backends_on_cpu("attention"))
def test_dnabert2_remote(dnabert2, backend):
    m, inp, out = dnabert2
    rows = slice(2, 3) if backend == "triton" else slice(0, 3)  # interpreter: the 17-token row
    ids, am = torch.from_numpy(inp["input_ids"][rows]), torch.from_numpy(inp["attention_mask"][rows])
    if backend == "triton":
        ids, am = ids[:, :24], am[:, :24]
    with torch.no_grad():
        before = m(ids, am)
    # the stand-in computes what DNABERT-2's remote code computes
    ref = out["last_hidden_state"][rows][:, : ids.shape[1]]
    np.testing.assert_allclose(before.numpy(), ref, atol=5e-5, rtol=1e-4)
    rep = omicskern.accelerate(m, backend=backend)
    try:
        assert rep.recognized and "bert.encoder" in rep.patched
        assert sum(p.endswith("attention.self") for p in rep.patched) == 2
        built = m.bert.encoder.bias_built
        with torch.no_grad():
            after = m(ids, am)
        assert m.bert.encoder.bias_built == built, "the accelerated encoder must not build the bias tensor"
        np.testing.assert_allclose(after.numpy(), ref, atol=5e-5, rtol=1e-4)
        assert (after[~am.bool()] == 0).all()
        # the MLM-with-labels path (subset of tokens in the last layer)
        subset = torch.zeros_like(am, dtype=torch.bool)
        subset[:, 3] = True
        with torch.no_grad():
            sub = m(ids, am, subset_mask=subset)
        restore(m)
        with torch.no_grad():
            sub_ref = m(ids, am, subset_mask=subset)
        torch.testing.assert_close(sub, sub_ref, atol=5e-5, rtol=1e-4)
        assert m.bert.encoder.bias_built == built + 1
    finally:
        restore(m)


# ---- HyenaDNA stand-in (modeling_hyena.py's HyenaFilter/HyenaOperator contract) -----------------


class HyenaFilter(_OmicsHyenaFilter):
    def forward(self, x, L, k=None, bias=None, *args, **kwargs):
        if k is None:
            k = self.filter(L)
        k = k[0] if type(k) is tuple else k
        return fft_conv_hyenadna_ref(x, k, bias)  # modeling_hyena.py's fftconv


class HyenaOperator(nn.Module):
    def __init__(self, d_model, l_max):
        super().__init__()
        self.d_model, self.l_max, self.order = d_model, l_max, 2
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
        self.filter_fn = HyenaFilter(d_model, emb_dim=5, order=64, seq_len=l_max, w=10)

    def forward(self, u):
        L = u.size(-2)
        u = self.in_proj(u).transpose(1, 2)
        *x, v = self.short_filter(u)[..., :L].split(self.d_model, dim=1)
        k = self.filter_fn.filter(L)[0].transpose(0, 1).reshape(1, self.d_model, L)
        bias = self.filter_fn.bias.reshape(1, self.d_model)
        for o, x_i in enumerate(reversed(x[1:])):
            v = self.filter_fn(v * x_i, L, k=k[o], bias=bias[o])
        return self.out_proj((v * x[0]).transpose(1, 2))


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_hyenadna_remote(shared_dir, monkeypatch, backend):
    sd = fixture_weights(shared_dir / "fixtures/hyenadna_tiny")
    pre = "backbone.layers.0.mixer."
    mixer = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    remote = HyenaOperator(128, 1026).eval()
    remote.load_state_dict(mixer, strict=True)
    ours = _OmicsHyenaOperator(128, l_max=1026, emb_dim=5, w=10).eval()
    ours.load_state_dict(mixer, strict=True)
    u = torch.randn(2, 31 if backend == "triton" else 300, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ours(u)
        before = remote(u)
    torch.testing.assert_close(before, ref, atol=1e-5, rtol=1e-4)
    calls = []
    real = fftconv_mod.fft_conv
    monkeypatch.setattr(fftconv_mod, "fft_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep = omicskern.accelerate(remote, backend=backend)
    assert rep.recognized and rep.patched == ["filter_fn"]
    with torch.no_grad():
        after = remote(u)
    assert len(calls) == 1
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-4)
    restore(remote)
    with torch.no_grad():
        remote(u)
    assert len(calls) == 1
