"""Plain-PyTorch definitions of ``fft_conv`` (float64), the yardstick for every backend.

``fft_conv_ref`` computes through ``torch.fft`` in float64 with the FFT size HyenaDNA uses (2L, or
the next even size for the two-sided case); ``fft_conv_direct_ref`` is the O(L^2) sum straight from
the definition, for small L, so the FFT reference is itself checked against the definition.
"""

from __future__ import annotations

import torch


def _check_shapes(u: torch.Tensor, k: torch.Tensor, causal: bool) -> int:
    L = u.shape[-1]
    want = L if causal else 2 * L - 1
    if k.shape[-1] != want:
        raise ValueError(f"fft_conv_ref: k has length {k.shape[-1]}, expected {want} "
                         f"({'causal: L' if causal else 'two-sided: 2L-1'}, L={L})")
    return L


def fft_conv_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                 gate: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
    """float64 FFT convolution; returns float64 (differentiable through torch autograd).

    Causal:    y[b,h,t] = sum_{s<=t} k[h,t-s] u[b,h,s] + bias[h] u[b,h,t]
    Two-sided: y[b,h,t] = sum_s k[h, L-1+t-s] u[b,h,s] + bias[h] u[b,h,t]   (k: [H, 2L-1])
    then y *= gate. u, gate: [B, H, L]; k: [H, Lk] or [B, H, Lk]; bias: [H].
    """
    L = _check_shapes(u, k, causal)
    ud, kd = u.double(), k.double()
    n = 2 * L if causal else 2 * (2 * L - 1)  # >= L + Lk - 1: no wrap-around
    y = torch.fft.irfft(torch.fft.rfft(ud, n=n) * torch.fft.rfft(kd, n=n), n=n)
    y = y[..., :L] if causal else y[..., L - 1:2 * L - 1]
    if bias is not None:
        y = y + bias.double()[:, None] * ud
    if gate is not None:
        y = y * gate.double()
    return y


def fft_conv_hyenadna_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None,
                          gate: torch.Tensor | None = None) -> torch.Tensor:
    """HyenaDNA's own causal ``fftconv`` (standalone_hyenadna.py), then the gate: the torch.fft path
    HyenaDNA users run today, and the baseline the benchmarks compare ``fft_conv`` against.

    y = (irfft(rfft(u, 2L) * rfft(k, 2L) / 2L)[..., :L] + bias[h] u) .to(u.dtype) * gate
    u, gate: [B, H, L]; k: [H, L]; bias: [H]; returns u's dtype. As in HyenaDNA the FFTs run in
    the filter's dtype (fp32 filters there), here at least fp32 since torch.fft has no bf16 path;
    a float64 filter gives a float64 computation.

        >>> u, k, D = torch.randn(2, 4, 17), torch.randn(4, 17), torch.randn(4)
        >>> y = fft_conv_hyenadna_ref(u, k, D)  # [2, 4, 17]
    """
    L = u.shape[-1]
    n = 2 * L
    dt = torch.promote_types(k.dtype, torch.float32)
    k_f = torch.fft.rfft(k.to(dt), n=n) / n
    u_f = torch.fft.rfft(u.to(dt), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    if bias is not None:
        y = y + u.to(dt) * bias.to(dt)[..., None]
    y = y.to(u.dtype)
    return y * gate if gate is not None else y


def fft_conv_direct_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                        gate: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
    """The definition as an explicit Toeplitz product in float64 (O(B H L^2): small L only)."""
    L = _check_shapes(u, k, causal)
    ud, kd = u.double(), k.double()
    t = torch.arange(L, device=u.device)
    lag = t[:, None] - t[None, :]  # [t, s] -> t - s
    if causal:
        idx = lag.clamp(min=0)
        T = kd[..., idx] * (lag >= 0)  # [..., H, L, L]
    else:
        T = kd[..., lag + L - 1]
    y = torch.einsum("...hts,bhs->bht", T, ud) if kd.dim() == 2 else torch.einsum("bhts,bhs->bht", T, ud)
    if bias is not None:
        y = y + bias.double()[:, None] * ud
    if gate is not None:
        y = y * gate.double()
    return y
