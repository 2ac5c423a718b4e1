"""Plain-PyTorch definition of RMSNorm with the fused residual add (mamba_ssm's ``rms_norm_ref``)."""

from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
                 eps: float = 1e-5, return_residual: bool = False):
    """``s = x + residual``; ``out = s / sqrt(mean(s^2, -1) + eps) * weight``, in float64.

    Returns ``out`` (float64), or ``(out, s)`` with ``return_residual``."""
    s = x.double() if residual is None else x.double() + residual.double()
    out = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return (out, s) if return_residual else out
