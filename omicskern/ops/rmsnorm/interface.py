"""``rms_norm``: RMSNorm over the last axis, with the residual add fused (Mamba's ``fused_add_norm``).

Backends (``OMICSKERN_RMS_NORM_BACKEND``), each in a file named after it: ``triton``
(``triton.py``: one program per block of rows, forward and backward kernels; CUDA default, CPU
through ``TRITON_INTERPRET=1``; imported only when chosen), ``torch`` (``torch.py``, CPU default),
``reference`` (``reference.py``, float64).
"""

from __future__ import annotations

import torch

from omicskern.ops import backends
from omicskern.ops.rmsnorm.reference import rms_norm_ref
from omicskern.ops.rmsnorm.torch import rms_norm_torch

_OP = "rms_norm"
_PKG = "omicskern.ops.rmsnorm"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "triton": backends.Backend(f"{_PKG}.triton", "rms_norm_triton", requires="triton"),
    "torch": backends.Backend(f"{_PKG}.torch", "rms_norm_torch"),
    "reference": backends.Backend(f"{_PKG}.reference", "rms_norm_ref"),
}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, eps: float = 1e-5, *,
             return_residual: bool = False, residual_dtype: torch.dtype | None = None,
             backend: str | None = None):
    """RMSNorm with an optional fused residual add (mamba_ssm's ``rms_norm_fn``, ``prenorm``)::

        s   = x + residual                 (x alone without a residual)
        out = s / sqrt(mean(s^2) + eps) * weight     (over the last axis, fp32)

    Args:
        x: ``[..., C]``; weight: ``[C]``; residual: like x, or None.
        eps: mamba's ``norm_epsilon`` (Caduceus: 1e-5).
        return_residual: also return ``s`` (the new residual stream, mamba's ``prenorm=True``).
        residual_dtype: dtype of the returned ``s`` (default: the residual's, else x's;
            ``torch.float32`` is mamba's ``residual_in_fp32``).
        backend: ``"triton"``, ``"torch"``, ``"reference"`` or None (CUDA -> triton, CPU -> torch).
    Returns:
        ``out`` in x's dtype, or ``(out, s)``. Differentiable in x, weight and residual.

    Example:
        >>> x, r = torch.randn(2, 10, 64), torch.randn(2, 10, 64)
        >>> out, s = rms_norm(x, torch.ones(64), r, return_residual=True)
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("rms_norm: x must be a [..., C] tensor")
    C = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (C,):
        raise ValueError(f"rms_norm: weight has shape "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight!r}, expected ({C},)")
    if residual is not None and (not isinstance(residual, torch.Tensor) or residual.shape != x.shape):
        raise ValueError(f"rms_norm: residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)} (as x)")
    for name, t in (("x", x), ("weight", weight), ("residual", residual)):
        if t is None:
            continue
        if t.dtype not in _FLOATS:
            raise TypeError(f"rms_norm: {name} has dtype {t.dtype}; expected a floating dtype")
        if t.device != x.device:
            raise ValueError(f"rms_norm: {name} is on {t.device} but x is on {x.device}")
    name = choose_backend(x, backend=backend)
    if name == "reference":
        out = rms_norm_ref(x, weight, residual, eps, return_residual)
        if not return_residual:
            return out.to(x.dtype)
        return out[0].to(x.dtype), out[1].to(residual_dtype or (residual.dtype if residual is not None else x.dtype))
    if name == "torch" or x.numel() == 0:
        return rms_norm_torch(x, weight, residual, eps, return_residual, residual_dtype)
    from omicskern.ops.rmsnorm.triton import rms_norm_triton

    return rms_norm_triton(x, weight, residual, eps, return_residual, residual_dtype)


def choose_backend(x: torch.Tensor, *, backend: str | None = None) -> str:
    """The backend :func:`rms_norm` would use for inputs like ``x``."""

    def triton_probe():
        reason = backends.triton_probe(x.device.type)
        if reason is not None:
            return reason
        from omicskern.ops.rmsnorm import triton as tk

        return tk.unsupported_reason(x.shape[-1])

    probes = {"triton": triton_probe, "torch": lambda: None, "reference": lambda: None}
    preference = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    return backends.choose(_OP, backend, probes, preference)
