"""``causal_conv1d``: depthwise causal conv with a short kernel (2-4 taps) and optional SiLU.

Backends (``OMICSKERN_CAUSAL_CONV1D_BACKEND``), each in a file named after it: ``triton``
(``triton.py``, CUDA default; CPU via the interpreter; a custom op with its autograd registered
there, imported only when chosen), ``torch`` (``torch.py``, ``F.conv1d``, CPU default),
``reference`` (``reference.py``, float64).
"""

from __future__ import annotations

import torch

from omicskern.ops import backends
from omicskern.ops.conv1d.reference import causal_conv1d_ref
from omicskern.ops.conv1d.torch import causal_conv1d_torch

_OP = "causal_conv1d"
_PKG = "omicskern.ops.conv1d"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "triton": backends.Backend(f"{_PKG}.triton", "causal_conv1d_op", requires="triton"),
    "torch": backends.Backend(f"{_PKG}.torch", "causal_conv1d_torch"),
    "reference": backends.Backend(f"{_PKG}.reference", "causal_conv1d_ref"),
}
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


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  activation: str | None = None, backend: str | None = None) -> torch.Tensor:
    """Depthwise causal convolution: ``y[b,c,t] = act(bias[c] + sum_j weight[c,j] x[b,c,t-K+1+j])``.

    Equal to ``nn.Conv1d(C, C, K, groups=C, padding=K-1)(x)[..., :L]`` (HyenaDNA's short filter;
    pass ``conv.weight.squeeze(1)``).

    Args:
        x: [B, C, L]; weight: [C, K] (K = 2..4 typical, up to 8); bias: [C] or None.
        activation: None or ``"silu"`` (fused).
        backend: ``"triton"``, ``"torch"``, ``"reference"`` or None (CUDA -> triton, CPU -> torch);
            ``OMICSKERN_CAUSAL_CONV1D_BACKEND`` overrides None.
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
    name = choose_backend(x, weight, backend=backend)
    if name == "reference":
        return causal_conv1d_ref(x, weight, bias, activation).to(x.dtype)
    if name == "torch":
        return causal_conv1d_torch(x, weight, bias, activation)
    from omicskern.ops.conv1d.triton import causal_conv1d_op

    return causal_conv1d_op(x, weight, bias, activation == "silu")


def choose_backend(x: torch.Tensor, weight: torch.Tensor, *, backend: str | None = None) -> str:
    """The backend :func:`causal_conv1d` would use for inputs like ``x``, ``weight``."""

    def triton_probe():
        reason = backends.triton_probe(x.device.type)
        if reason is not None:
            return reason
        from omicskern.ops.conv1d import triton as tk

        return tk.unsupported_reason(weight.shape[1])

    probes = {"triton": triton_probe, "torch": lambda: None, "reference": lambda: None}
    preference = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    return backends.choose(_OP, backend, probes, preference)
