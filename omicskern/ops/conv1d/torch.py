"""The ``torch`` backend of ``causal_conv1d``: ``F.conv1d`` with fp32 accumulation (the CPU default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        activation: str | None) -> torch.Tensor:
    """Same contract as :func:`omicskern.ops.conv1d.causal_conv1d` (arguments already validated)."""
    K = weight.shape[1]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp32 accumulation
    w = weight.to(cdt).unsqueeze(1)
    b = bias.to(cdt) if bias is not None else None
    y = F.conv1d(x.to(cdt), w, b, padding=K - 1, groups=x.shape[1])[..., :x.shape[-1]]
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype).contiguous()
