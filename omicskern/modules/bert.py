"""Unpadded encoder layers: DNABERT-2's ALiBi BERT, transformers' BERT and ESM/NT.

Every layer works on packed tokens ``x: [T, C]`` with ``cu_seqlens: int32 [N+1]`` and
``max_seqlen`` (see :mod:`omicskern.ops.packing`): the projections and MLPs run on real tokens
only and the attention op runs varlen, so neither FLOPs nor memory go to padding and no
``[B, H, L, L]`` bias or mask is built. Parameter names follow the released checkpoints
(``attention.self.Wqkv`` for DNABERT-2, ``attention.self.query`` ... for BERT/ESM), so a
``state_dict`` of the reference loads unchanged.

Example:
    >>> layer = BertLayer(hidden=64, heads=4, intermediate=256)
    >>> y = layer(torch.randn(10, 64), cu_seqlens=torch.tensor([0, 3, 10], dtype=torch.int32), max_seqlen=7)
"""

from __future__ import annotations

import torch
from torch import nn

from omicskern.modules.mlp import Dense, DenseLayerNorm, GatedGeluMLP, activation, gelu_erf, glu_split
from omicskern.ops.attention import attention
from omicskern.ops.rotary import apply_rotary


class _Attn(nn.Module):
    """Holds the attention backend choice (``None`` = best available), set by the model."""

    backend: str | None = None
    rotary_backend: str | None = None


# ---------------------------------------------------------------------------------------------
# DNABERT-2


class AlibiSelfAttention(_Attn):
    """DNABERT-2's fused ``Wqkv`` (rows: q, then k, then v; each ``heads x head_dim``) + ALiBi."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of num_attention_heads {heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.Wqkv = nn.Linear(hidden, 3 * hidden)

    def forward(self, x, cu_seqlens, max_seqlen, alibi_slopes):
        qkv = self.Wqkv(x).view(x.shape[0], 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        o = attention(q, k, v, alibi_slopes=alibi_slopes, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                      backend=self.backend)
        return o.reshape(x.shape[0], -1)


class AlibiAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = AlibiSelfAttention(hidden, heads)
        self.output = DenseLayerNorm(hidden, hidden, eps)

    def forward(self, x, cu_seqlens, max_seqlen, alibi_slopes):
        return self.output(self.self(x, cu_seqlens, max_seqlen, alibi_slopes), x)


class AlibiBertLayer(nn.Module):
    """One DNABERT-2 layer (post-LN): ``x = LN(x + attn(x))``; ``x = LN(x + wo(gelu(g1) * g2))``.

    x: ``[T, C]`` packed -> ``[T, C]``; ``alibi_slopes: float32 [H]``.
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12):
        super().__init__()
        self.attention = AlibiAttention(hidden, heads, eps)
        self.mlp = GatedGeluMLP(hidden, intermediate, eps)

    def forward(self, x, cu_seqlens, max_seqlen, alibi_slopes):
        return self.mlp(self.attention(x, cu_seqlens, max_seqlen, alibi_slopes))


# ---------------------------------------------------------------------------------------------
# transformers' BERT (Geneformer)


class QKVSelfAttention(_Attn):
    """Separate ``query``/``key``/``value`` projections (transformers' BERT/ESM naming).

    ``scale_query_first`` multiplies q by ``head_dim**-0.5`` before the rotary embedding (ESM's
    order); otherwise the op applies the same scale to the scores -- equal up to rounding.
    """

    def __init__(self, hidden: int, heads: int, rotary: bool = False, rotary_base: float = 10000.0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of num_attention_heads {heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.rotary = rotary
        if rotary:
            # a persistent buffer: NT-v2 checkpoints store it per layer
            inv = 1.0 / (rotary_base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
            self.rotary_embeddings = _InvFreq(inv)

    def forward(self, x, cu_seqlens, max_seqlen):
        t = x.shape[0]
        q = self.query(x).view(t, self.heads, self.head_dim)
        k = self.key(x).view(t, self.heads, self.head_dim)
        v = self.value(x).view(t, self.heads, self.head_dim)
        if self.rotary:
            # ESM scales q before rotating it; done in the same order so rounding matches.
            q = q * self.head_dim ** -0.5
            cos, sin = self.rotary_embeddings.cos_sin(max_seqlen, x.dtype, x.device)
            # Positions restart at 0 in every sequence; rotary scores depend on position differences
            # only, so this equals the reference's padded-axis positions for any padding side.
            q = apply_rotary(q, cos, sin, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=self.rotary_backend)
            k = apply_rotary(k, cos, sin, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=self.rotary_backend)
            o = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, softmax_scale=1.0,
                          backend=self.backend)
        else:
            o = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=self.backend)
        return o.reshape(t, -1)


class _InvFreq(nn.Module):
    """``inv_freq`` buffer under the name ``rotary_embeddings.inv_freq`` (NT-v2's key)."""

    def __init__(self, inv_freq: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq)

    def cos_sin(self, seqlen: int, dtype: torch.dtype, device):
        """cos, sin tables ``[seqlen, head_dim/2]`` for positions ``0..seqlen-1``. The angles are
        formed in fp32 (as the reference does) then cast to the model dtype."""
        pos = torch.arange(max(int(seqlen), 1), device=device, dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq.to(device=device, dtype=torch.float32))
        return ang.cos().to(dtype), ang.sin().to(dtype)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = QKVSelfAttention(hidden, heads)
        self.output = DenseLayerNorm(hidden, hidden, eps)

    def forward(self, x, cu_seqlens, max_seqlen):
        return self.output(self.self(x, cu_seqlens, max_seqlen), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.act = activation(act)

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """transformers' ``BertLayer`` (post-LN, absolute positions added before the encoder).

    x: ``[T, C]`` packed -> ``[T, C]``.
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.attention = BertAttention(hidden, heads, eps)
        self.intermediate = BertIntermediate(hidden, intermediate, act)
        self.output = DenseLayerNorm(intermediate, hidden, eps)

    def forward(self, x, cu_seqlens, max_seqlen):
        a = self.attention(x, cu_seqlens, max_seqlen)
        return self.output(self.intermediate(a), a)


# ---------------------------------------------------------------------------------------------
# ESM / Nucleotide Transformer


class EsmAttention(nn.Module):
    """ESM's pre-LN attention: ``x + output.dense(attn(LayerNorm(x)))``."""

    def __init__(self, hidden: int, heads: int, eps: float, rotary: bool):
        super().__init__()
        self.self = QKVSelfAttention(hidden, heads, rotary=rotary)
        self.output = Dense(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, cu_seqlens, max_seqlen):
        return x + self.output(self.self(self.LayerNorm(x), cu_seqlens, max_seqlen))


class EsmLayer(nn.Module):
    """One ESM / Nucleotide Transformer layer (pre-LN).

    v1 (ESM): ``x + output(gelu(intermediate(LN(x))))``. v2 (``glu=True``): ``intermediate`` maps to
    ``2I`` features, ``silu(u[:I]) * u[I:]`` feeds ``output``; ``bias`` is ``add_bias_fnn``.
    x: ``[T, C]`` packed -> ``[T, C]``.
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12, rotary: bool = False,
                 glu: bool = False, bias: bool = True):
        super().__init__()
        self.glu = glu
        self.attention = EsmAttention(hidden, heads, eps, rotary)
        self.intermediate = Dense(hidden, 2 * intermediate if glu else intermediate, bias=bias)
        self.output = Dense(intermediate, hidden, bias=bias)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, cu_seqlens, max_seqlen):
        a = self.attention(x, cu_seqlens, max_seqlen)
        u = self.intermediate(self.LayerNorm(a))
        h = glu_split(u, torch.nn.functional.silu) if self.glu else gelu_erf(u)
        return a + self.output(h)


def set_attention_backend(model: nn.Module, backend: str | None, rotary: str | None = None) -> None:
    """Make every attention of ``model`` use ``backend`` and rotary embedding use ``rotary``
    (``None`` = best available)."""
    for m in model.modules():
        if isinstance(m, _Attn):
            m.backend = backend
            m.rotary_backend = rotary
