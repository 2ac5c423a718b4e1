"""``fft_conv``: long (causal or two-sided) convolution through the FFT, with bias and gate fused.

Backends (chosen by :func:`omicskern.ops.backends.choose`, env ``OMICSKERN_FFT_CONV_BACKEND``),
each in a file named after it:

* ``triton`` (``triton.py``): omicskern's Triton kernels (CUDA; CPU only through
  ``TRITON_INTERPRET=1``), custom ops with their autograd registered there; imported only when chosen;
* ``torch`` (``torch.py``): ``torch.fft`` with a fast FFT size, fp32 (fp64 for fp64 inputs) and its
  own autograd Function that recomputes spectra instead of storing them (CPU default);
* ``reference`` (``reference.py``): float64 ``torch.fft`` (:func:`fft_conv_ref`) through plain autograd.
"""

from __future__ import annotations

import torch

from omicskern.ops import backends
from omicskern.ops.fftconv.reference import fft_conv_ref
from omicskern.ops.fftconv.torch import fft_conv_torch

_OP = "fft_conv"
_PKG = "omicskern.ops.fftconv"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "triton": backends.Backend(f"{_PKG}.triton", "fft_conv_op", requires="triton"),
    "torch": backends.Backend(f"{_PKG}.torch", "fft_conv_torch"),
    "reference": backends.Backend(f"{_PKG}.reference", "fft_conv_ref"),
}


# ----------------------------------------------------------------------------------------------
# Argument checks (shared by every backend)
# ----------------------------------------------------------------------------------------------
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(u, k, bias, gate, causal):
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"fft_conv: u must be a [B, H, L] tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    B, H, L = u.shape
    if L == 0:
        raise ValueError("fft_conv: u has length L=0")
    Lk = L if causal else 2 * L - 1
    what = "L" if causal else "2L-1 (two-sided, causal=False)"
    if not isinstance(k, torch.Tensor) or k.dim() not in (2, 3):
        raise ValueError(f"fft_conv: k must be [H, {what}] or [B, H, {what}]")
    if k.dim() == 2 and tuple(k.shape) != (H, Lk) or k.dim() == 3 and tuple(k.shape) != (B, H, Lk):
        raise ValueError(f"fft_conv: k has shape {tuple(k.shape)}, expected ({H}, {Lk}) or "
                         f"({B}, {H}, {Lk}) for u of shape {tuple(u.shape)} (k length must be {what})")
    if bias is not None and tuple(bias.shape) != (H,):
        raise ValueError(f"fft_conv: bias has shape {tuple(bias.shape)}, expected ({H},)")
    if gate is not None and tuple(gate.shape) != tuple(u.shape):
        raise ValueError(f"fft_conv: gate has shape {tuple(gate.shape)}, expected {tuple(u.shape)} (as u)")
    for name, t in (("u", u), ("k", k), ("bias", bias), ("gate", gate)):
        if t is None:
            continue
        if t.dtype not in _FLOATS:
            raise TypeError(f"fft_conv: {name} has dtype {t.dtype}; expected a floating dtype")
        if t.device != u.device:
            raise ValueError(f"fft_conv: {name} is on {t.device} but u is on {u.device}")


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------
def _triton_probe(u: torch.Tensor, causal: bool):
    def probe():
        reason = backends.triton_probe(u.device.type)
        if reason is not None:
            return reason
        from omicskern.ops.fftconv import triton as tk

        return tk.unsupported_reason(u.shape[-1], causal)
    return probe


def fft_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, *,
             gate: torch.Tensor | None = None, causal: bool = True,
             backend: str | None = None) -> torch.Tensor:
    """Long convolution of every channel with its own filter, via the FFT.

    Causal (``causal=True``)::

        y[b, h, t] = (sum_{s <= t} k[h, t - s] u[b, h, s] + bias[h] u[b, h, t]) * gate[b, h, t]

    Two-sided (``causal=False``, for bidirectional models): ``k`` has length 2L-1 and is centred,
    ``k[h, L-1+d]`` weighting the input d positions *before* t (d<0: after); a linear (not circular)
    convolution, "same" size::

        y[b, h, t] = (sum_{s=0}^{L-1} k[h, L-1 + t - s] u[b, h, s] + bias[h] u[b, h, t]) * gate

    Args:
        u: [B, H, L] input (fp32/fp16/bf16/fp64), any L >= 1.
        k: [H, L] shared over the batch or [B, H, L] per sample ([.., 2L-1] when ``causal=False``).
        bias: [H] or None, the skip term D (HyenaDNA's ``filter_fn.bias``).
        gate: [B, H, L] or None, multiplies the result (Hyena's next gate, fused).
        causal: see above.
        backend: ``"triton"``, ``"torch"``, ``"reference"`` or None (best available: CUDA ->
            triton where it supports L, else torch; CPU -> torch). The environment variable
            ``OMICSKERN_FFT_CONV_BACKEND`` overrides None.
    Returns:
        [B, H, L] in u's dtype; accumulation is fp32 (fp64 for fp64 inputs). Differentiable in
        u, k, bias and gate.

    Example:
        >>> u, k = torch.randn(2, 4, 1000), torch.randn(4, 1000)
        >>> y = fft_conv(u, k, torch.randn(4), gate=torch.randn(2, 4, 1000))
    """
    _check(u, k, bias, gate, causal)
    if u.numel() == 0:  # B = 0 or H = 0: empty output, zero gradients for every input
        y = u * 0
        for t in (k, bias, gate):
            if t is not None:
                y = y + t.sum() * 0
        return y.to(u.dtype)
    name = choose_backend(u, causal=causal, backend=backend)
    if name == "reference":
        return fft_conv_ref(u, k, bias, gate, causal).to(u.dtype)
    if name == "triton":
        from omicskern.ops.fftconv.triton import fft_conv_op

        return fft_conv_op(u, k, bias, gate, causal)
    return fft_conv_torch(u, k, bias, gate, causal)


def choose_backend(u: torch.Tensor, *, causal: bool = True, backend: str | None = None) -> str:
    """The backend :func:`fft_conv` would use for an input like ``u`` (see :func:`fft_conv`)."""
    probes = {
        "triton": _triton_probe(u, causal),
        "torch": lambda: None,
        "reference": lambda: None,
    }
    preference = ["triton", "torch"] if u.device.type == "cuda" else ["torch"]
    return backends.choose(_OP, backend, probes, preference)
