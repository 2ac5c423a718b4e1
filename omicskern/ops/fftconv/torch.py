"""The ``torch`` backend of ``fft_conv``: ``torch.fft`` at a fast FFT size, fp32 (fp64 for fp64
inputs), with its own backward that recomputes spectra instead of storing them (the CPU default).

Rows are processed in (batch x channel) blocks whose transform-domain temporaries stay within
``TORCH_CHUNK_BYTES``, so peak memory is the outputs plus one block.
"""

from __future__ import annotations

import torch


# ----------------------------------------------------------------------------------------------
# FFT sizes
# ----------------------------------------------------------------------------------------------
def _smooth_sizes(limit: int = 1 << 40) -> list[int]:
    out = []
    p2 = 2  # even sizes only (rfft/irfft pairs)
    while p2 <= limit:
        p3 = p2
        while p3 <= limit:
            p5 = p3
            while p5 <= limit:
                p7 = p5
                while p7 <= limit:
                    out.append(p7)
                    p7 *= 7
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return sorted(out)


_FAST_SIZES = _smooth_sizes()  # ~9k numbers, built once at import (a few ms)


def fast_fft_len(n: int) -> int:
    """Smallest even m >= n whose prime factors are all in {2, 3, 5, 7} (fast FFT sizes for
    MKL/pocketFFT/cuFFT).

    HyenaDNA pads to 2L; any m >= 2L-1 avoids wrap-around, and e.g. L=4097 then costs an FFT of
    8232 = 2^3 3 7^3 instead of 8194 = 2 17 241 (a large prime factor: a slow size for every FFT
    library). A binary search in a table, in plain Python so torch.compile traces it cheaply.
    """
    lo, hi = 0, len(_FAST_SIZES) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _FAST_SIZES[mid] < n:
            lo = mid + 1
        else:
            hi = mid
    return _FAST_SIZES[lo]


# ----------------------------------------------------------------------------------------------
# torch.fft with its own backward
# ----------------------------------------------------------------------------------------------
def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _k_spectrum(k, bias, n, offset, cdt):
    """rfft of k with the bias folded in as an extra tap at lag 0 (index ``offset``), scaled by 1/n.

    y = k * u + D u  ==  (k + D delta_0) * u, so the bias costs nothing in the transform domain and
    its gradient is the lag-0 tap of dk. Scaling the (small, [H, n]) filter spectrum instead of the
    output saves a pass over [B, H, n].
    """
    kk = k.to(cdt)
    if bias is not None:
        kk = kk.clone() if kk is k else kk
        kk[..., offset] += bias.to(cdt)
    return torch.fft.rfft(kk, n=n, norm="forward")


TORCH_CHUNK_BYTES = 256 << 20  # transform-domain temporaries per block of rows


def _blocks(B, H, n, cdt):
    """(b0, b1, h0, h1) row blocks, h outermost, whose spectra and irfft outputs (about 3 n
    reals a row) stay within TORCH_CHUNK_BYTES: peak memory is then the outputs plus one block,
    not [B, H, n] complex arrays."""
    per_row = 3 * n * torch.finfo(cdt).bits // 8
    rows = max(1, TORCH_CHUNK_BYTES // per_row)
    hc = min(H, rows)
    bc = max(1, min(B, rows // hc))
    for h0 in range(0, H, hc):
        yield [(b0, min(B, b0 + bc), h0, min(H, h0 + hc)) for b0 in range(0, B, bc)]


def _kslice(k, bias, b0, b1, h0, h1):
    kk = k[h0:h1] if k.dim() == 2 else k[b0:b1, h0:h1]
    return kk, (bias[h0:h1] if bias is not None else None)


def _torch_fwd(u, k, bias, gate, causal, out_dtype):
    B, H, L = u.shape
    cdt = _compute_dtype(u)
    n = fast_fft_len(2 * L - 1)
    offset = 0 if causal else L - 1
    out = torch.empty(u.shape, dtype=out_dtype, device=u.device)
    for blocks in _blocks(B, H, n, cdt):
        K = None
        for b0, b1, h0, h1 in blocks:
            if K is None or k.dim() == 3:  # a shared filter's spectrum serves every batch block
                K = _k_spectrum(*_kslice(k, bias, b0, b1, h0, h1), n, offset, cdt)
            U = torch.fft.rfft(u[b0:b1, h0:h1].to(cdt), n=n)
            U.mul_(K)  # in place; K broadcasts over the batch
            y = torch.fft.irfft(U, n=n, norm="forward")[..., offset:offset + L]
            del U
            if gate is not None:
                torch.mul(y, gate[b0:b1, h0:h1], out=out[b0:b1, h0:h1])
            else:
                out[b0:b1, h0:h1] = y
    return out


def _torch_bwd(dy, u, k, bias, gate, causal, needs):
    need_u, need_k, need_bias, need_gate = needs
    B, H, L = u.shape
    cdt = _compute_dtype(u)
    n = fast_fft_len(2 * L - 1)
    offset = 0 if causal else L - 1
    Lk = k.shape[-1]
    need_kf = need_k or need_bias
    dev = u.device
    du = torch.empty(u.shape, dtype=u.dtype, device=dev) if need_u else None
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=dev) if need_gate else None
    dkf = torch.empty(k.shape, dtype=cdt, device=dev) if need_kf else None
    for blocks in _blocks(B, H, n, cdt):
        K = acc = None
        for b0, b1, h0, h1 in blocks:
            sl = (slice(b0, b1), slice(h0, h1))
            if (need_u or need_gate) and (K is None or k.dim() == 3):
                K = _k_spectrum(*_kslice(k, bias, b0, b1, h0, h1), n, offset, cdt)
            U = torch.fft.rfft(u[sl].to(cdt), n=n) if (need_kf or need_gate) else None
            dyc = dy[sl].to(cdt)
            if gate is not None:
                if need_gate:
                    z = torch.fft.irfft(U * K, n=n, norm="forward")[..., offset:offset + L]
                    torch.mul(dyc, z, out=dgate[sl])
                    del z
                dz = dyc * gate[sl].to(cdt)
            else:
                dz = dyc
            # two-sided: dz sits at [L-1, 2L-1) of the length-n frame (see docs/fftconv.md)
            DZ = torch.fft.rfft(torch.nn.functional.pad(dz, (offset, 0)) if offset else dz, n=n)
            del dz, dyc
            if need_u:
                # correlation with k == convolution with the conjugate spectrum
                du[sl] = torch.fft.irfft(DZ * K.conj(), n=n, norm="forward")[..., :L]
            if need_kf:
                P = DZ.mul_(U.conj())
                if k.dim() == 2:  # shared filter: sum the cross-spectrum over the batch
                    acc = P.sum(0) if acc is None else acc.add_(P.sum(0))
                else:
                    dkf[sl] = torch.fft.irfft(P, n=n)[..., :Lk]
            del U, DZ
        if need_kf and k.dim() == 2:
            dkf[h0:h1] = torch.fft.irfft(acc, n=n)[..., :Lk]
    dk = dbias = None
    if need_bias:
        db = dkf[..., offset]  # the skip term is the filter's tap at lag 0
        # a copy, never a view of dk ([H] elements)
        dbias = (db.clone() if db.dim() == 1 else db.sum(0)).to(bias.dtype)
    if need_k:
        dk = dkf.to(k.dtype)
    return du, dk, dbias, dgate


class FftConvTorchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k, bias, gate, causal):
        ctx.save_for_backward(u, k, bias, gate)
        ctx.causal = causal
        return _torch_fwd(u, k, bias, gate, causal, u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u, k, bias, gate = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 bias is not None and ctx.needs_input_grad[2],
                 gate is not None and ctx.needs_input_grad[3])
        du, dk, dbias, dgate = _torch_bwd(dy, u, k, bias, gate, ctx.causal, needs)
        return du, dk, dbias, dgate, None


def fft_conv_torch(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, gate: torch.Tensor | None,
                   causal: bool) -> torch.Tensor:
    """Same contract as :func:`omicskern.ops.fftconv.fft_conv` (arguments already validated)."""
    return FftConvTorchFn.apply(u, k, bias, gate, causal)
