"""Plain-PyTorch definition of the short depthwise causal convolution ``causal_conv1d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """y[b,c,t] = act(bias[c] + sum_{j<K} weight[c,j] x[b,c,t-(K-1)+j]), zeros before t=0.

    Same as ``nn.Conv1d(C, C, K, groups=C, padding=K-1)(x)[..., :L]`` (HyenaDNA's short filter).
    Computes in float64 and returns float64. x: [B, C, L], weight: [C, K], bias: [C].
    """
    xd, wd = x.double(), weight.double()
    K = wd.shape[-1]
    L = xd.shape[-1]
    xp = F.pad(xd, (K - 1, 0))
    y = sum(wd[:, j, None] * xp[..., j:j + L] for j in range(K))
    if bias is not None:
        y = y + bias.double()[:, None]
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"causal_conv1d_ref: unknown activation {activation!r}")
    return y
