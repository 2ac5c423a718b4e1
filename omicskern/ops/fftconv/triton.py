"""Triton kernels for ``fft_conv``: FFTs as (complex) matrix products, Monarch / Cooley-Tukey style.

A length-N DFT with N = N1 N2 is, on the N1 x N2 tile ``X[n1, n2] = x[N2 n1 + n2]``::

    A = F_N1 @ X                      (DFT down the columns)
    A *= T,  T[k1, n2] = w_N^(k1 n2)  (twiddles)
    Y = A @ F_N2                      Y[k1, k2] = x_hat[k1 + N1 k2]

so one FFT is two dense matrix products (tensor cores on GPU) plus an elementwise twiddle; the
spectrum comes out in a permuted order, which is harmless because it is only multiplied
pointwise by the filter's spectrum, prepared in the same order, before the inverse runs the
steps backwards with conjugate matrices. Complex products are four real ``tl.dot``s.

* N <= ``FUSED_MAX_N`` (8192, i.e. L <= 4096): one kernel per (b, h) row does load -> FFT ->
  x filter spectrum -> inverse FFT -> gate -> store; nothing but u, gate and y touch memory.
* larger N (to L = 2^20): N = P M with P >= 16; three kernels (the "four-step" FFT): an outer
  P-point DFT over column blocks with twiddles into a scratch buffer, a per-(row, k_p) kernel
  doing the inner M-point FFT, filter product and inverse with the two-level scheme above, and
  the outer inverse with gate and output window. Rows are processed in chunks so the scratch
  buffer stays bounded.

The filter's spectrum (one per h, or per (b, h)) is computed with ``torch.fft`` in fp32, scaled
by 1/N, with the skip term D folded in as an extra tap, and gathered into the kernels' order.
All products accumulate in fp32 (``tl.dot`` with ``input_precision="tf32x3"`` on GPU, close to
fp32; plain fp32 in the interpreter).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

FUSED_MAX_N = 4096      # largest FFT done in one fused kernel (64 x 64 tiles: 16 KiB operands)
OUTER_MAX_P = 64        # largest outer DFT (P x P matrix) of the multi-level path
MIN_N = 256             # 16 x 16: tl.dot needs every dim >= 16
MAX_L = 1 << 20
SCRATCH_BYTES = 1 << 30  # row chunking bound for the large-N path's scratch buffer
PAIR_ROWS = True        # fused path: two batch rows of one channel per complex FFT


def unsupported_reason(L: int, causal: bool) -> str | None:
    if L > MAX_L:
        return f"the Triton fft_conv supports L <= {MAX_L} (got L={L}); use backend='torch'"
    return None


def _split(n: int) -> tuple[int, int]:
    """n = n1 * n2, powers of two, n1 >= n2 (n1 = n2 or 2 n2)."""
    lg = int(math.log2(n))
    n2 = 1 << (lg // 2)
    return n // n2, n2


def plan(L: int) -> dict:
    """FFT size and decomposition for length L (both causal and two-sided need N >= 2L-1).

    ``Ps``: outer DFT sizes (empty: one fused kernel); the inner FFT has length M = N1 N2.
    """
    N = max(MIN_N, 1 << max(0, (2 * L - 2).bit_length()))
    Ps, M = [], N
    while M > FUSED_MAX_N:
        P = min(OUTER_MAX_P, max(16, M // FUSED_MAX_N), M // MIN_N)
        if P < 16:  # only with a tiny FUSED_MAX_N: grow N rather than use a < 16 DFT
            N, M = N * (16 // P), M * (16 // P)
            continue
        Ps.append(P)
        M //= P
    N1, N2 = _split(M)
    return dict(N=N, fused=not Ps, Ps=Ps, M=M, N1=N1, N2=N2)


# ----------------------------------------------------------------------------------------------
# constant matrices (fp64 -> fp32, cached per device)
# ----------------------------------------------------------------------------------------------
def _cplx_planes(z: torch.Tensor, device) -> torch.Tensor:
    return torch.stack([z.real, z.imag]).to(torch.float32).to(device).contiguous()


@functools.lru_cache(maxsize=64)
def _dft(n: int, device) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return _cplx_planes(torch.exp(-2j * math.pi * torch.outer(i, i) / n), device)


@functools.lru_cache(maxsize=64)
def _twiddle(rows: int, cols: int, n: int, device) -> torch.Tensor:
    r = torch.arange(rows, dtype=torch.float64)
    c = torch.arange(cols, dtype=torch.float64)
    # exact integer product mod n keeps the angle accurate for large n
    prod = torch.remainder(torch.outer(r, c), n)
    return _cplx_planes(torch.exp(-2j * math.pi * prod / n), device)


@functools.lru_cache(maxsize=64)
def _spectrum_index(N: int, Ps: tuple, N1: int, N2: int, device) -> torch.Tensor:
    """Flat index into x_hat for each slot of the kernels' [P_1, ..., P_j, N1, N2] spectrum.

    Level i splits its length into P_i x rest with output index k = k_pi + P_i k_rest, and the
    inner tile holds k_m = k1 + N1 k2, so slot (kp_1, ..., kp_j, k1, k2) is
    kp_1 + P_1 (kp_2 + P_2 (... + P_j (k1 + N1 k2))).
    """
    k1 = torch.arange(N1)[:, None]
    k2 = torch.arange(N2)[None, :]
    idx = k1 + N1 * k2  # [N1, N2]
    for P in reversed(Ps):
        kp = torch.arange(P).reshape(P, *([1] * idx.dim()))
        idx = kp + P * idx.unsqueeze(0)
    return idx.reshape(-1).to(device)


def filter_spectrum(k: torch.Tensor, bias, offset: int, pl: dict) -> torch.Tensor:
    """[Hk, 2, N] fp32 (re, im planes) of (k + D delta_offset) / N in the kernels' order."""
    N = pl["N"]
    kk = k.to(torch.float32)
    if bias is not None:
        kk = kk.clone() if kk is k else kk
        kk[..., offset] += bias.to(torch.float32)
    kk = kk.reshape(-1, kk.shape[-1])
    idx = _spectrum_index(N, tuple(pl["Ps"]), pl["N1"], pl["N2"], k.device)
    out = torch.empty(kk.shape[0], 2, N, dtype=torch.float32, device=k.device)
    # in row chunks: the complex spectrum and its gathered copy stay small next to `out`
    step = max(1, (64 << 20) // (16 * N))
    for r0 in range(0, kk.shape[0], step):
        K = torch.fft.fft(kk[r0:r0 + step], n=N).mul_(1.0 / N)[:, idx]
        out[r0:r0 + step, 0] = K.real
        out[r0:r0 + step, 1] = K.imag
    return out


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_mat(ptr, R: tl.constexpr, C: tl.constexpr, PLANE: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    c = tl.arange(0, C)[None, :]
    re = tl.load(ptr + r * C + c)
    im = tl.load(ptr + PLANE + r * C + c)
    return re, im


@triton.jit
def _fft2_fwd(xr, xi, f1_ptr, f2_ptr, tw_ptr, N1: tl.constexpr, N2: tl.constexpr,
              REAL_IN: tl.constexpr, PREC: tl.constexpr):
    """[N1, N2] tile (n1, n2) -> spectrum tile (k1, k2) = x_hat[k1 + N1 k2]."""
    f1r, f1i = _load_mat(f1_ptr, N1, N1, N1 * N1)
    if REAL_IN:
        ar = tl.dot(f1r, xr, input_precision=PREC)
        ai = tl.dot(f1i, xr, input_precision=PREC)
    else:
        ar = tl.dot(f1r, xr, input_precision=PREC) - tl.dot(f1i, xi, input_precision=PREC)
        ai = tl.dot(f1r, xi, input_precision=PREC) + tl.dot(f1i, xr, input_precision=PREC)
    tr, ti = _load_mat(tw_ptr, N1, N2, N1 * N2)
    br = ar * tr - ai * ti
    bi = ar * ti + ai * tr
    f2r, f2i = _load_mat(f2_ptr, N2, N2, N2 * N2)
    yr = tl.dot(br, f2r, input_precision=PREC) - tl.dot(bi, f2i, input_precision=PREC)
    yi = tl.dot(br, f2i, input_precision=PREC) + tl.dot(bi, f2r, input_precision=PREC)
    return yr, yi


@triton.jit
def _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1: tl.constexpr, N2: tl.constexpr,
              REAL_OUT: tl.constexpr, PREC: tl.constexpr):
    """Inverse of :func:`_fft2_fwd` without the 1/N (folded into the filter spectrum)."""
    f2r, f2i = _load_mat(f2_ptr, N2, N2, N2 * N2)
    # Z @ conj(F2)
    br = tl.dot(zr, f2r, input_precision=PREC) + tl.dot(zi, f2i, input_precision=PREC)
    bi = tl.dot(zi, f2r, input_precision=PREC) - tl.dot(zr, f2i, input_precision=PREC)
    tr, ti = _load_mat(tw_ptr, N1, N2, N1 * N2)
    cr = br * tr + bi * ti
    ci = bi * tr - br * ti
    f1r, f1i = _load_mat(f1_ptr, N1, N1, N1 * N1)
    # conj(F1) @ C
    outr = tl.dot(f1r, cr, input_precision=PREC) + tl.dot(f1i, ci, input_precision=PREC)
    if REAL_OUT:
        outi = outr
    else:
        outi = tl.dot(f1r, ci, input_precision=PREC) - tl.dot(f1i, cr, input_precision=PREC)
    return outr, outi


@triton.jit
def _load_row(ptr, b64, h64, sb, sh, t, m, MUL_PTR, smb, smh, HAS_MUL: tl.constexpr):
    x = tl.load(ptr + b64 * sb + h64 * sh + t, mask=m, other=0.0).to(tl.float32)
    if HAS_MUL:
        x = x * tl.load(MUL_PTR + b64 * smb + h64 * smh + t, mask=m, other=0.0).to(tl.float32)
    return x


@triton.jit
def _fft_conv_fwd_kernel(x_ptr, xmul_ptr, spec_ptr, out_ptr, omul_ptr, f1_ptr, f2_ptr, tw_ptr,
                         B, H, L, in_off, out_off, spec_bstride, sxb, sxh, smb, smh, sob, soh,
                         N1: tl.constexpr, N2: tl.constexpr, HAS_XMUL: tl.constexpr,
                         HAS_OMUL: tl.constexpr, CONJ: tl.constexpr, PAIR: tl.constexpr,
                         PREC: tl.constexpr):
    """out[t] = omul[t] * (irfft(rfft(x*xmul placed at in_off) * spec))[out_off + t] for one
    (b, h) row, or with PAIR for rows (2j, h) and (2j+1, h) at once: when both use the same filter
    spectrum, z = x_0 + i x_1 needs ONE complex FFT, product and inverse, whose real and
    imaginary parts are the two results (8 instead of 12 matrix products a row).

    x, xmul, omul: any (batch, channel) strides with unit stride along L (Hyena's gates are
    channel slices of one projection: no copies); out is contiguous [B, H, L]."""
    pid = tl.program_id(0)
    h = pid % H
    h64 = h.to(tl.int64)
    if PAIR:
        b = (pid // H) * 2
    else:
        b = pid // H
    b64 = b.to(tl.int64)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    t = n - in_off
    m = (t >= 0) & (t < L)
    x = _load_row(x_ptr, b64, h64, sxb, sxh, t, m, xmul_ptr, smb, smh, HAS_XMUL)
    if PAIR:
        L2 = tl.where(b + 1 < B, L, 0)  # the second row exists (odd B: not in the last pair)
        x2 = _load_row(x_ptr, b64 + 1, h64, sxb, sxh, t, (t >= 0) & (t < L2), xmul_ptr, smb, smh,
                       HAS_XMUL)
        yr, yi = _fft2_fwd(x, x2, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, PREC)
    else:
        yr, yi = _fft2_fwd(x, x, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, PREC)
    sp = spec_ptr + b64 * spec_bstride + h64 * (2 * N1 * N2)
    kr, ki = _load_mat(sp, N1, N2, N1 * N2)
    if CONJ:  # correlation (backward) = convolution with the conjugate spectrum
        ki = -ki
    zr = yr * kr - yi * ki
    zi = yr * ki + yi * kr
    y, y2 = _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, not PAIR, PREC)
    t = n - out_off
    m = (t >= 0) & (t < L)
    if HAS_OMUL:
        y = y * tl.load(omul_ptr + b64 * sob + h64 * soh + t, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + (b64 * H + h64) * L + t, y.to(out_ptr.dtype.element_ty), mask=m)
    if PAIR:
        m2 = (t >= 0) & (t < L2)
        if HAS_OMUL:
            y2 = y2 * tl.load(omul_ptr + (b64 + 1) * sob + h64 * soh + t, mask=m2, other=0.0).to(tl.float32)
        tl.store(out_ptr + ((b64 + 1) * H + h64) * L + t, y2.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _fft_conv_bwd_dk_kernel(dy_ptr, gate_ptr, u_ptr, dk_ptr, f1_ptr, f2_ptr, tw_ptr, NB, H, L, Lk,
                            in_off, inv_n, N1: tl.constexpr, N2: tl.constexpr,
                            HAS_GATE: tl.constexpr, PREC: tl.constexpr):
    """dk[j] = sum over NB batch rows of sum_m dzp[m] u[m - j], j < Lk, dz = dy * gate placed at
    in_off: the cross-spectrum DZ conj(U) is accumulated over the batch in registers, then one
    inverse FFT. One program per h (k shared; NB = B) or per (b, h) (k per sample; NB = 1)."""
    pid = tl.program_id(0)
    h = pid % H
    b0 = (pid // H) * NB
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    t = n - in_off
    mz = (t >= 0) & (t < L)
    mu = n < L
    accr = tl.zeros([N1, N2], dtype=tl.float32)
    acci = tl.zeros([N1, N2], dtype=tl.float32)
    for i in range(NB):
        base = ((b0 + i) * H + h).to(tl.int64) * L
        dz = tl.load(dy_ptr + base + t, mask=mz, other=0.0).to(tl.float32)
        if HAS_GATE:
            dz = dz * tl.load(gate_ptr + base + t, mask=mz, other=0.0).to(tl.float32)
        zr, zi = _fft2_fwd(dz, dz, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, PREC)
        uu = tl.load(u_ptr + base + n, mask=mu, other=0.0).to(tl.float32)
        ur, ui = _fft2_fwd(uu, uu, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, PREC)
        accr += zr * ur + zi * ui
        acci += zi * ur - zr * ui
    y, _ = _fft2_inv(accr * inv_n, acci * inv_n, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, PREC)
    tl.store(dk_ptr + pid.to(tl.int64) * Lk + n, y, mask=n < Lk)


@triton.jit
def _fft_conv_outer_fwd_kernel(x_ptr, xmul_ptr, bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, L, in_off,
                               P: tl.constexpr, M: tl.constexpr, BM: tl.constexpr,
                               HAS_XMUL: tl.constexpr, PREC: tl.constexpr):
    """Outer step of the four-step FFT: P-point DFTs of columns x[M p + m], times w_N^(k_p m)."""
    row = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[:, None]
    mc = mb * BM + tl.arange(0, BM)[None, :]
    t = p * M + mc - in_off
    msk = (t >= 0) & (t < L)
    base = row.to(tl.int64) * L
    x = tl.load(x_ptr + base + t, mask=msk, other=0.0).to(tl.float32)
    if HAS_XMUL:
        x = x * tl.load(xmul_ptr + base + t, mask=msk, other=0.0).to(tl.float32)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    ar = tl.dot(fr, x, input_precision=PREC)
    ai = tl.dot(fi, x, input_precision=PREC)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    o = row.to(tl.int64) * (P * M) + p * M + mc
    tl.store(bufr_ptr + o, ar * tr - ai * ti)
    tl.store(bufi_ptr + o, ar * ti + ai * tr)


@triton.jit
def _fft_conv_outer_cfwd_kernel(bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, P: tl.constexpr,
                                M: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """A further level on complex data, in place: each length-P*M sequence -> P-point DFTs of its
    columns, times w_(P M)^(k_p m)."""
    seq = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[:, None]
    mc = mb * BM + tl.arange(0, BM)[None, :]
    o = seq.to(tl.int64) * (P * M) + p * M + mc
    xr = tl.load(bufr_ptr + o)
    xi = tl.load(bufi_ptr + o)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    ar = tl.dot(fr, xr, input_precision=PREC) - tl.dot(fi, xi, input_precision=PREC)
    ai = tl.dot(fr, xi, input_precision=PREC) + tl.dot(fi, xr, input_precision=PREC)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    tl.store(bufr_ptr + o, ar * tr - ai * ti)
    tl.store(bufi_ptr + o, ar * ti + ai * tr)


@triton.jit
def _fft_conv_outer_cinv_kernel(bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, P: tl.constexpr,
                                M: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """Inverse of :func:`_fft_conv_outer_cfwd_kernel` (no 1/N), in place."""
    seq = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[:, None]
    mc = mb * BM + tl.arange(0, BM)[None, :]
    o = seq.to(tl.int64) * (P * M) + p * M + mc
    br = tl.load(bufr_ptr + o)
    bi = tl.load(bufi_ptr + o)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    cr = br * tr + bi * ti
    ci = bi * tr - br * ti
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    tl.store(bufr_ptr + o, tl.dot(fr, cr, input_precision=PREC) + tl.dot(fi, ci, input_precision=PREC))
    tl.store(bufi_ptr + o, tl.dot(fr, ci, input_precision=PREC) - tl.dot(fi, cr, input_precision=PREC))


@triton.jit
def _fft_conv_inner_kernel(bufr_ptr, bufi_ptr, spec_ptr, f1_ptr, f2_ptr, tw_ptr, H, row0,
                           spec_bstride, P: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                           MODE: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr):
    """Row (local), k_p (over all outer levels, P = their product), in place. MODE 0: inner
    M-point FFT, times the filter spectrum, inverse; 1: forward FFT only; 2: inverse only."""
    row = tl.program_id(0)
    kp = tl.program_id(1)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    o = (row.to(tl.int64) * P + kp) * (N1 * N2) + n
    zr = tl.load(bufr_ptr + o)
    zi = tl.load(bufi_ptr + o)
    if MODE != 2:
        zr, zi = _fft2_fwd(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, PREC)
    if MODE == 0:
        grow = row0 + row
        b = grow // H
        h = grow % H
        sp = spec_ptr + b.to(tl.int64) * spec_bstride + h.to(tl.int64) * (2 * P * N1 * N2) + kp * (N1 * N2)
        kr, ki = _load_mat(sp, N1, N2, P * N1 * N2)
        if CONJ:
            ki = -ki
        yr = zr * kr - zi * ki
        zi = zr * ki + zi * kr
        zr = yr
    if MODE != 1:
        zr, zi = _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, PREC)
    tl.store(bufr_ptr + o, zr)
    tl.store(bufi_ptr + o, zi)


@triton.jit
def _fft_conv_outer_inv_kernel(bufr_ptr, bufi_ptr, out_ptr, omul_ptr, fp_ptr, tw_ptr, L, out_off,
                               P: tl.constexpr, M: tl.constexpr, BM: tl.constexpr,
                               HAS_OMUL: tl.constexpr, PREC: tl.constexpr):
    """Inverse outer step: conj twiddles, conj(F_P) @ B, real part, output window and gate."""
    row = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[:, None]
    mc = mb * BM + tl.arange(0, BM)[None, :]
    o = row.to(tl.int64) * (P * M) + p * M + mc
    br = tl.load(bufr_ptr + o)
    bi = tl.load(bufi_ptr + o)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    cr = br * tr + bi * ti
    ci = bi * tr - br * ti
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    y = tl.dot(fr, cr, input_precision=PREC) + tl.dot(fi, ci, input_precision=PREC)
    t = p * M + mc - out_off
    msk = (t >= 0) & (t < L)
    base = row.to(tl.int64) * L
    if HAS_OMUL:
        y = y * tl.load(omul_ptr + base + t, mask=msk, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + t, y.to(out_ptr.dtype.element_ty), mask=msk)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _prec(device) -> str:
    return "tf32x3" if device.type == "cuda" else "ieee"


def _unit_last(t):
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _pipeline(x, xmul, spec, omul, in_off, out_off, pl, out_dtype, spec_batched, conj=False):
    """out = omul * window(irfft(rfft(frame(x * xmul, in_off)) * spec), out_off); x: [B, H, L]."""
    B, H, L = x.shape
    dev = x.device
    out = torch.empty(B, H, L, dtype=out_dtype, device=dev)
    if dev.type == "cpu":  # interpreter runs (tests): poison, every element must be written
        out.fill_(float("nan"))
    prec = _prec(dev)
    N = pl["N"]
    spec_bstride = H * 2 * N if spec_batched else 0
    rows = B * H
    if pl["fused"]:
        N1, N2 = pl["N1"], pl["N2"]
        x, xmul, omul = (_unit_last(t) for t in (x, xmul, omul))
        xmul_, omul_ = (t if t is not None else x for t in (xmul, omul))
        pair = PAIR_ROWS and not spec_batched and B > 1  # two rows share one filter spectrum
        _fft_conv_fwd_kernel[(H * triton.cdiv(B, 2) if pair else rows,)](
            x, xmul_, spec, out, omul_, _dft(N1, dev), _dft(N2, dev), _twiddle(N1, N2, N, dev),
            B, H, L, in_off, out_off, spec_bstride, x.stride(0), x.stride(1), xmul_.stride(0),
            xmul_.stride(1), omul_.stride(0), omul_.stride(1), N1=N1, N2=N2, HAS_XMUL=xmul is not None,
            HAS_OMUL=omul is not None, CONJ=conj, PAIR=pair, PREC=prec,
            num_warps=8 if N >= 2048 else 4)
        return out
    x = x.contiguous()
    xmul = xmul.contiguous() if xmul is not None else None
    omul = omul.contiguous() if omul is not None else None
    chunk = max(1, min(rows, SCRATCH_BYTES // (8 * N)))
    xf, of = x.view(rows, L), out.view(rows, L)
    xm = xmul.view(rows, L) if xmul is not None else None
    om = omul.view(rows, L) if omul is not None else None
    ml = _MultiLevel(pl, dev, chunk)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        ml.forward(xf[r0:r1], xm[r0:r1] if xm is not None else None, in_off, ml.bufr, ml.bufi)
        ml.inner(r1 - r0, 0, ml.bufr, ml.bufi, spec, H, r0, spec_bstride, conj)
        ml.inverse(r1 - r0, ml.bufr, ml.bufi, of[r0:r1], om[r0:r1] if om is not None else None, out_off)
    return out


class _MultiLevel:
    """The large-N path's steps over a chunk of rows and its scratch buffers ([chunk, N] re/im)."""

    def __init__(self, pl, dev, chunk, nbuf=1):
        self.pl, self.dev, self.prec = pl, dev, _prec(dev)
        N, Ps, M = pl["N"], pl["Ps"], pl["M"]
        # level i works on sequences of length S_i = N / (P_1 ... P_{i-1}) split as P_i x S_i / P_i
        self.lens = [N]
        for P in Ps:
            self.lens.append(self.lens[-1] // P)
        self.mats = [(_dft(P, dev), _twiddle(P, S // P, S, dev)) for P, S in zip(Ps, self.lens)]
        self.inner_mats = (_dft(pl["N1"], dev), _dft(pl["N2"], dev), _twiddle(pl["N1"], pl["N2"], M, dev))
        self.bufs = [torch.empty(chunk * N, dtype=torch.float32, device=dev) for _ in range(2 * nbuf)]
        self.bufr, self.bufi = self.bufs[0], self.bufs[1]

    @staticmethod
    def _bm(P, Mi):
        return min(Mi, 64 if P <= 32 else 32)

    def forward(self, x2d, xmul2d, in_off, bufr, bufi, inner=False):
        """Outer levels of the forward FFT of rows x2d [n, L] (times xmul2d) into bufr/bufi;
        with ``inner`` also the inner FFT (the full spectrum, in the kernels' order)."""
        n, L = x2d.shape
        Ps, lens, N, prec = self.pl["Ps"], self.lens, self.pl["N"], self.prec
        P, S = Ps[0], lens[0]
        _fft_conv_outer_fwd_kernel[(n, (S // P) // self._bm(P, S // P))](
            x2d, xmul2d if xmul2d is not None else x2d, bufr, bufi, self.mats[0][0], self.mats[0][1],
            L, in_off, P=P, M=S // P, BM=self._bm(P, S // P), HAS_XMUL=xmul2d is not None,
            PREC=prec, num_warps=4)
        for i in range(1, len(Ps)):
            P, S = Ps[i], lens[i]
            _fft_conv_outer_cfwd_kernel[(n * (N // S), (S // P) // self._bm(P, S // P))](
                bufr, bufi, self.mats[i][0], self.mats[i][1], P=P, M=S // P, BM=self._bm(P, S // P),
                PREC=prec, num_warps=4)
        if inner:
            self.inner(n, 1, bufr, bufi)

    def inner(self, n, mode, bufr, bufi, spec=None, H=1, r0=0, spec_bstride=0, conj=False):
        pl = self.pl
        f1, f2, twi = self.inner_mats
        nseq = pl["N"] // pl["M"]
        _fft_conv_inner_kernel[(n, nseq)](
            bufr, bufi, spec if spec is not None else bufr, f1, f2, twi, H, r0, spec_bstride,
            P=nseq, N1=pl["N1"], N2=pl["N2"], MODE=mode, CONJ=conj, PREC=self.prec, num_warps=4)

    def inverse(self, n, bufr, bufi, out2d, omul2d, out_off, inner=False):
        """(With ``inner``: the inner inverse FFT, then) the outer levels backwards, the last one
        writing the real output window [out_off, out_off + Lout) of each row (times omul2d)."""
        if inner:
            self.inner(n, 2, bufr, bufi)
        Ps, lens, N, prec = self.pl["Ps"], self.lens, self.pl["N"], self.prec
        for i in reversed(range(1, len(Ps))):
            P, S = Ps[i], lens[i]
            _fft_conv_outer_cinv_kernel[(n * (N // S), (S // P) // self._bm(P, S // P))](
                bufr, bufi, self.mats[i][0], self.mats[i][1], P=P, M=S // P, BM=self._bm(P, S // P),
                PREC=prec, num_warps=4)
        P, S = Ps[0], lens[0]
        _fft_conv_outer_inv_kernel[(n, (S // P) // self._bm(P, S // P))](
            bufr, bufi, out2d, omul2d if omul2d is not None else out2d, self.mats[0][0], self.mats[0][1],
            out2d.shape[1], out_off, P=P, M=S // P, BM=self._bm(P, S // P),
            HAS_OMUL=omul2d is not None, PREC=prec, num_warps=4)


def _dk(dy, gate, u, Lk, offset, pl, k_batched):
    """fp32 [H, Lk] (or [B, H, Lk] for per-sample k): sum over the batch of the correlation of
    dz = dy * gate (placed at ``offset``) with u."""
    B, H, L = u.shape
    dev = u.device
    nacc = B * H if k_batched else H
    dk = torch.empty(nacc, Lk, dtype=torch.float32, device=dev)
    if dev.type == "cpu":
        dk.fill_(float("nan"))
    N = pl["N"]
    if pl["fused"]:
        N1, N2 = pl["N1"], pl["N2"]
        _fft_conv_bwd_dk_kernel[(nacc,)](
            dy, gate if gate is not None else dy, u, dk, _dft(N1, dev), _dft(N2, dev),
            _twiddle(N1, N2, N, dev), 1 if k_batched else B, H, L, Lk, offset, 1.0 / N,
            N1=N1, N2=N2, HAS_GATE=gate is not None, PREC=_prec(dev),
            num_warps=8 if N >= 2048 else 4)
        return dk.view(B, H, Lk) if k_batched else dk
    # large N: spectra of dz and u per chunk of rows, cross-spectrum accumulated per h in torch
    chunk = max(1, min(H, SCRATCH_BYTES // (16 * N)))
    ml = _MultiLevel(pl, dev, chunk, nbuf=2)
    ar, ai, br, bi = (t.view(chunk, N) for t in ml.bufs)
    accr = torch.zeros(nacc, N, dtype=torch.float32, device=dev)
    acci = torch.zeros_like(accr)
    dy2, u2 = dy.view(B * H, L), u.view(B * H, L)
    g2 = gate.view(B * H, L) if gate is not None else None
    for b in range(B):
        for h0 in range(0, H, chunk):
            h1 = min(H, h0 + chunk)
            n, r0, r1 = h1 - h0, b * H + h0, b * H + h1
            ml.forward(dy2[r0:r1], g2[r0:r1] if g2 is not None else None, offset,
                       ml.bufs[0], ml.bufs[1], inner=True)
            ml.forward(u2[r0:r1], None, 0, ml.bufs[2], ml.bufs[3], inner=True)
            a0 = r0 if k_batched else h0
            accr[a0:a0 + n] += ar[:n] * br[:n] + ai[:n] * bi[:n]
            acci[a0:a0 + n] += ai[:n] * br[:n] - ar[:n] * bi[:n]
    accr.mul_(1.0 / N)
    acci.mul_(1.0 / N)
    chunk2 = chunk * 2
    for a0 in range(0, nacc, chunk2):
        a1 = min(nacc, a0 + chunk2)
        ml.inverse(a1 - a0, accr[a0:a1], acci[a0:a1], dk[a0:a1], None, 0, inner=True)
    return dk.view(B, H, Lk) if k_batched else dk


def fft_conv_fwd(u, k, bias, gate, causal):
    L = u.shape[-1]
    pl = plan(L)
    offset = 0 if causal else L - 1
    spec = filter_spectrum(k, bias, offset, pl)
    return _pipeline(u, None, spec, gate, 0, offset, pl, u.dtype, k.dim() == 3)


def fft_conv_bwd(dy, u, k, bias, gate, causal, needs):
    """Gradients, all by Triton kernels: du (the pipeline on dz = dy * gate with the conjugate
    filter spectrum), dgate (the pipeline without gate, times dy), dk and dbias (the cross-spectrum
    of dz and u summed over the batch, then one inverse FFT; dbias is its lag-0 tap)."""
    need_u, need_k, need_bias, need_gate = needs
    L = u.shape[-1]
    pl = plan(L)
    offset = 0 if causal else L - 1
    dy = dy.contiguous()
    du = dgate = dk = dbias = None
    if need_u or need_gate:
        spec = filter_spectrum(k, bias, offset, pl)
        if need_u:
            # correlation with k == convolution with conj(spectrum)
            du = _pipeline(dy, gate, spec, None, offset, 0, pl, u.dtype, k.dim() == 3, conj=True)
        if need_gate:
            dgate = _pipeline(u, None, spec, dy, 0, offset, pl, gate.dtype, k.dim() == 3)
    if need_k or need_bias:
        dkf = _dk(dy, gate.contiguous() if gate is not None else None, u.contiguous(), k.shape[-1],
                  offset, pl, k.dim() == 3)
        if need_bias:
            db = dkf[..., offset]  # the skip term is the filter's tap at lag 0
            dbias = (db.clone() if db.dim() == 1 else db.sum(0)).to(bias.dtype)
        if need_k:
            dk = dkf.to(k.dtype)
    return du, dk, dbias, dgate


# ----------------------------------------------------------------------------------------------
# custom ops (torch.compile sees them as opaque nodes with fake-tensor shapes)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("omicskern::fft_conv", mutates_args=())
def fft_conv_op(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None,
                gate: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Triton fft_conv forward; u: [B, H, L] -> [B, H, L] (u's dtype)."""
    return fft_conv_fwd(u, k, bias, gate, causal)


@fft_conv_op.register_fake
def _(u, k, bias, gate, causal):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("omicskern::fft_conv_bwd", mutates_args=())
def fft_conv_bwd_op(dy: torch.Tensor, u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None,
                    gate: torch.Tensor | None, causal: bool, need_u: bool, need_k: bool,
                    need_bias: bool, need_gate: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, dk, dbias, dgate); a gradient not asked for comes back as an empty tensor."""
    grads = fft_conv_bwd(dy, u, k, bias, gate, causal, (need_u, need_k, need_bias, need_gate))
    return tuple(g if g is not None else u.new_empty(0) for g in grads)


@fft_conv_bwd_op.register_fake
def _(dy, u, k, bias, gate, causal, need_u, need_k, need_bias, need_gate):
    def like(t, need):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if need else u.new_empty(0)
    return (like(u, need_u), like(k, need_k), like(bias, need_bias) if bias is not None else u.new_empty(0),
            like(gate, need_gate) if gate is not None else u.new_empty(0))


def _setup_context(ctx, inputs, output):
    u, k, bias, gate, causal = inputs
    ctx.save_for_backward(u, k, bias, gate)
    ctx.causal = causal
    ctx.has = (bias is not None, gate is not None)


def _backward(ctx, dy):
    u, k, bias, gate = ctx.saved_tensors
    nu, nk, nb, ng = ctx.needs_input_grad[:4]
    nb, ng = nb and ctx.has[0], ng and ctx.has[1]
    du, dk, db, dg = fft_conv_bwd_op(dy, u, k, bias, gate, ctx.causal, nu, nk, nb, ng)
    return du if nu else None, dk if nk else None, db if nb else None, dg if ng else None, None


fft_conv_op.register_autograd(_backward, setup_context=_setup_context)
