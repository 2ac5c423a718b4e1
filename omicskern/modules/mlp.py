"""Feed-forward blocks of the encoders, with the released checkpoints' parameter names.

They work on any leading shape (``[T, C]`` packed tokens or ``[B, L, C]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, ``x * Phi(x)`` (what BERT's, DNABERT-2's and ESM's ``gelu`` compute)."""
    return F.gelu(x)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# transformers' ACT2FN names -> functions (the ones the supported checkpoints use)
ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_python": gelu_erf,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": _gelu_new,
    "gelu_fast": _gelu_new,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    """The activation transformers calls ``name`` (``hidden_act`` of a config)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {', '.join(ACTIVATIONS)}") from None


class GatedGeluMLP(nn.Module):
    """DNABERT-2's ``BertGatedLinearUnitMLP`` (post-LN): ``LN(x + wo(gelu(g[:, :I]) * g[:, I:]))``
    with ``g = gated_layers(x)`` (no bias). The *first* half is the activated one.

    x: ``[..., C]`` -> ``[..., C]``.
    """

    def __init__(self, hidden: int, intermediate: int, eps: float = 1e-12):
        super().__init__()
        self.intermediate = intermediate
        self.gated_layers = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.wo = nn.Linear(intermediate, hidden)
        self.layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gated_layers(x)
        h = gelu_erf(g[..., : self.intermediate]) * g[..., self.intermediate:]
        return self.layernorm(self.wo(h) + x)


class Dense(nn.Module):
    """A linear layer named ``dense`` (as in transformers' ``*Intermediate``/``*Output`` blocks)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class DenseLayerNorm(nn.Module):
    """transformers' ``BertSelfOutput``/``BertOutput``: ``LayerNorm(dense(h) + residual)`` (post-LN)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


def glu_split(u: torch.Tensor, act) -> torch.Tensor:
    """NT-v2's gated FFN: ``act(u[..., :I]) * u[..., I:]`` with ``u`` of width ``2I``."""
    i = u.shape[-1] // 2
    return act(u[..., :i]) * u[..., i:]


def init_linear_(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style init (normal weights, zero biases, unit LayerNorms) for models built from a config."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
