"""The ``torch`` backend of ``rms_norm``: plain torch ops in fp32 (fp64 for fp64), autograd by torch."""

from __future__ import annotations

import torch


def rms_norm_torch(x, weight, residual=None, eps=1e-5, return_residual=False, residual_dtype=None):
    """Same contract as :func:`omicskern.ops.rmsnorm.rms_norm` (arguments validated)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.to(cdt) if residual is None else x.to(cdt) + residual.to(cdt)
    out = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.to(cdt)).to(x.dtype)
    if not return_residual:
        return out
    return out, s.to(residual_dtype or (residual.dtype if residual is not None else x.dtype))
