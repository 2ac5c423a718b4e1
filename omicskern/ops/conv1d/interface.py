"""``causal_conv1d``: depthwise causal conv with a short kernel (2-4 taps) and optional SiLU.

Backends (``OMICSKERN_CAUSAL_CONV1D_BACKEND``): ``triton`` (CUDA default; CPU via the
interpreter), ``torch`` (``F.conv1d``, CPU default), ``reference`` (float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omicskern.ops import backends

_OP = "causal_conv1d"
_ACTIVATIONS = (None, "silu")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(x, weight, bias, activation):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError("causal_conv1d: x must be a [B, C, L] tensor")
    B, C, L = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"causal_conv1d: weight must be [C={C}, K], got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight!r}")
    K = weight.shape[1]
    if not 1 <= K <= 8:
        raise ValueError(f"causal_conv1d: kernel size K={K} not supported (1..8; 2-4 is typical)")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"causal_conv1d: bias has shape {tuple(bias.shape)}, expected ({C},)")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype not in _FLOATS:
            raise TypeError(f"causal_conv1d: {name} has dtype {t.dtype}; expected a floating dtype")
        if t.device != x.device:
            raise ValueError(f"causal_conv1d: {name} is on {t.device} but x is on {x.device}")


def _torch_impl(x, weight, bias, activation):
    K = weight.shape[1]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp32 accumulation
    w = weight.to(cdt).unsqueeze(1)
    b = bias.to(cdt) if bias is not None else None
    y = F.conv1d(x.to(cdt), w, b, padding=K - 1, groups=x.shape[1])[..., :x.shape[-1]]
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype).contiguous()


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  activation: str | None = None, backend: str | None = None) -> torch.Tensor:
    """Depthwise causal convolution: ``y[b,c,t] = act(bias[c] + sum_j weight[c,j] x[b,c,t-K+1+j])``.

    Equal to ``nn.Conv1d(C, C, K, groups=C, padding=K-1)(x)[..., :L]`` (HyenaDNA's short filter;
    pass ``conv.weight.squeeze(1)``).

    Args:
        x: [B, C, L]; weight: [C, K] (K = 2..4 typical, up to 8); bias: [C] or None.
        activation: None or ``"silu"`` (fused).
        backend: ``"triton"``, ``"torch"``, ``"reference"`` or None (CUDA -> triton, CPU -> torch).
    Returns:
        [B, C, L] in x's dtype (fp32 accumulation).

    Example:
        >>> x, w = torch.randn(2, 8, 100), torch.randn(8, 3)
        >>> y = causal_conv1d(x, w, torch.randn(8), activation="silu")
    """
    _check(x, weight, bias, activation)
    if x.numel() == 0:  # B = 0 or C = 0: empty output, zero gradients for every input
        y = x * 0 + weight.sum() * 0
        return (y + bias.sum() * 0 if bias is not None else y).to(x.dtype)

    def triton_probe():
        reason = backends.triton_probe(x.device.type)
        if reason is not None:
            return reason
        from omicskern.ops.conv1d import triton as tk

        return tk.unsupported_reason(weight.shape[1])

    probes = {"triton": triton_probe, "torch": lambda: None, "reference": lambda: None}
    preference = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    name = backends.choose(_OP, backend, probes, preference)
    if name == "reference":
        from omicskern.ops.conv1d.reference import causal_conv1d_ref

        return causal_conv1d_ref(x, weight, bias, activation).to(x.dtype)
    if name == "torch":
        return _torch_impl(x, weight, bias, activation)
    from omicskern.ops.conv1d.triton import causal_conv1d_op

    return causal_conv1d_op(x, weight, bias, activation == "silu")
