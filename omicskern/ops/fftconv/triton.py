"""Triton kernels for ``fft_conv``: FFTs as (complex) matrix products, Monarch / Cooley-Tukey style.

A length-N DFT with N = N1 N2 is, on the N1 x N2 tile ``X[n1, n2] = x[N2 n1 + n2]``::

    A = F_N1 @ X                      (DFT down the columns)
    A *= T,  T[k1, n2] = w_N^(k1 n2)  (twiddles)
    Y = A @ F_N2                      Y[k1, k2] = x_hat[k1 + N1 k2]

so one FFT is two dense matrix products (tensor cores on GPU) plus an elementwise twiddle; the
spectrum comes out in a permuted order, which is harmless because it is only multiplied
pointwise by the filter's spectrum, prepared in the same order, before the inverse runs the
steps backwards with conjugate matrices. Complex products are four real ``tl.dot``s.

* N <= ``fused_max(dtype)`` (4096 for fp16 / bf16, i.e. L <= 2048; 512 for fp32): one kernel
  per job (a (b, h) row, or two batch rows of one channel as real and imaginary parts) does load
  -> FFT -> x filter spectrum -> inverse FFT -> gate -> store; nothing but u, gate and y touch
  memory.
* larger N (to L = 2^20): N = P M with P >= 16; the "four-step" FFT: an outer P-point DFT over
  column blocks with twiddles into a scratch buffer (further levels in place), a per-(job, k_p)
  kernel doing the inner M-point FFT, filter product and inverse with the two-level scheme above,
  and the outer inverse with gate and output window. Two rows per job here too; jobs in chunks
  so the scratch buffer stays bounded.
* jobs are h-major: consecutive programs share a channel's filter spectrum (L2 reuse).

Precision: fp16 / bf16 inputs multiply operands in their own dtype with fp32 accumulation (one
tensor-core MMA per real product; DFT matrices stored in that dtype, twiddles and elementwise work
in fp32); fp32 inputs use fp32 operands (``tf32x3`` on GPU, ``ieee`` in the interpreter). DFT
stages are unitary (F / sqrt(n)), so the filter spectrum (``torch.fft`` in fp32, the skip term D
folded in as an extra tap, gathered into the kernels' order) is unscaled. The stated bound against
torch.fft is in docs/fftconv.md ("Precision contract").
"""

from __future__ import annotations

import functools
import os
import math

import torch
import triton
import triton.language as tl

FUSED_MAX_N = 4096      # largest FFT done in one fused kernel (64 x 64 tiles: 16 KiB operands)
FUSED_MAX_N_FP32 = 512  # the same for fp32 inputs (tf32x3 operands; see fused_max)
OUTER_MAX_P = 64        # largest outer DFT (P x P matrix) of the multi-level path
OUTER_MAX_P_FP32 = 32   # the same for fp32 inputs (see outer_max)
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


def fused_max(dtype: torch.dtype = torch.bfloat16) -> int:
    """Largest FFT one kernel holds (the fused path, and the inner FFT of the multi-level path)
    for inputs of ``dtype``: 64 x 64 tiles for fp16 / bf16 operands; 32 x 16 for fp32, whose
    ``tf32x3`` products carry every operand as two tf32 halves (on sm_90 the fp32 kernels spill
    from N = 1024 on, 600 B - 1.9 KB at 255 registers, on 4, 8 or 16 warps alike: measured with
    benchmarks/sm90_compile_check.py)."""
    return FUSED_MAX_N if operand_dtype(dtype) != torch.float32 else min(FUSED_MAX_N, FUSED_MAX_N_FP32)


def outer_max(dtype: torch.dtype = torch.bfloat16) -> int:
    """Largest outer DFT for inputs of ``dtype`` (fp32: 32; its P = 64 outer kernels spill 64-688 B
    on 4 warps, more on 8 warps or with BM = 32)."""
    return OUTER_MAX_P if operand_dtype(dtype) != torch.float32 else min(OUTER_MAX_P, OUTER_MAX_P_FP32)


def plan(L: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """FFT size and decomposition for length L (both causal and two-sided need N >= 2L-1) and
    inputs of ``dtype`` (see :func:`fused_max`, :func:`outer_max`).

    ``Ps``: outer DFT sizes (empty: one fused kernel); the inner FFT has length M = N1 N2.
    Outer sizes are chosen greedily (the smallest P that brings M to the fused size). Every
    factor is at least 16 (tl.dot's minimum): when the greedy split would leave M between the
    fused size and 16 x MIN_N, earlier levels give up the missing factor (each staying >= 16),
    or else N grows (any N >= 2L-1 is exact). Only fp32 grows: 1024 and 2048 to 4096 = 16 x 256,
    32768 to 65536 = 16 x 16 x 256.
    """
    fmax, pmax = fused_max(dtype), outer_max(dtype)
    N = max(MIN_N, 1 << max(0, (2 * L - 2).bit_length()))
    Ps, M = [], N
    while M > fmax:
        P = min(pmax, max(16, M // fmax), M // MIN_N)
        if P < 16:
            f = 16 // P  # M < 16 MIN_N: the next level needs M f
            for i in reversed(range(len(Ps))):
                while f > 1 and Ps[i] >= 32:
                    Ps[i] //= 2
                    M *= 2
                    f //= 2
            N, M = N * f, M * f
            continue
        Ps.append(P)
        M //= P
    N1, N2 = _split(M)
    return dict(N=N, fused=not Ps, Ps=Ps, M=M, N1=N1, N2=N2)


# ----------------------------------------------------------------------------------------------
# constant matrices (fp64 -> operand dtype, cached per device)
# ----------------------------------------------------------------------------------------------
_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the Monarch products' operands (and of the multi-level scratch) for inputs of
    ``dtype``: fp16 / bf16 inputs keep their dtype (one tensor-core MMA per real product, fp32
    accumulation); fp32 inputs use fp32 operands (``tf32x3`` on GPU, about fp32 accuracy)."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _cplx_planes(z: torch.Tensor, dtype, device) -> torch.Tensor:
    return torch.stack([z.real, z.imag]).to(dtype).to(device).contiguous()


@functools.lru_cache(maxsize=64)
def _dft(n: int, dtype, device) -> torch.Tensor:
    """Unitary DFT matrix F_n / sqrt(n), re/im planes in ``dtype``.

    Unitary stages keep every intermediate within sqrt(n) of its input's magnitude (the plain
    F_n grows it up to n-fold, which overflows fp16 operands for inputs above ~1e3); the forward
    and inverse transforms together carry the 1/N, so the filter spectrum is unscaled."""
    i = torch.arange(n, dtype=torch.float64)
    return _cplx_planes(torch.exp(-2j * math.pi * torch.outer(i, i) / n) / math.sqrt(n), dtype, device)


@functools.lru_cache(maxsize=64)
def _twiddle(rows: int, cols: int, n: int, device) -> torch.Tensor:
    """fp32 twiddles w_n^(r c) (elementwise factors stay fp32 in every precision)."""
    r = torch.arange(rows, dtype=torch.float64)
    c = torch.arange(cols, dtype=torch.float64)
    # exact integer product mod n keeps the angle accurate for large n
    prod = torch.remainder(torch.outer(r, c), n)
    return _cplx_planes(torch.exp(-2j * math.pi * prod / n), torch.float32, device)


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
    """[Hk, 2, N] fp32 (re, im planes) of the unscaled spectrum of k + D delta_offset in the
    kernels' order (the 1/N is carried by the unitary transforms)."""
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
        K = torch.fft.fft(kk[r0:r0 + step], n=N)[:, idx]
        out[r0:r0 + step, 0] = K.real
        out[r0:r0 + step, 1] = K.imag
    return out


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
# The interpreter's bf16 tl.dot is wrong (numpy has no bf16): there, bf16 operands are rounded
# to bf16 and multiplied as fp32, which is exactly what the GPU's bf16 MMA with fp32 accumulation
# computes (a product of two bf16 values is exact in fp32).
_EMULATE_BF16 = tl.constexpr(os.environ.get("TRITON_INTERPRET", "") == "1")


@triton.jit
def _rnd(x, DT: tl.constexpr):
    """x rounded to the operand dtype DT (a tl.dot operand)."""
    if _EMULATE_BF16 and DT == tl.bfloat16:
        return x.to(DT).to(tl.float32)
    else:
        return x.to(DT)


@triton.jit
def _load_mat(ptr, R: tl.constexpr, C: tl.constexpr, PLANE: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    c = tl.arange(0, C)[None, :]
    re = tl.load(ptr + r * C + c)
    im = tl.load(ptr + PLANE + r * C + c)
    return re, im


@triton.jit
def _fft2_fwd(xr, xi, f1_ptr, f2_ptr, tw_ptr, N1: tl.constexpr, N2: tl.constexpr,
              REAL_IN: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """[N1, N2] tile (n1, n2) -> spectrum tile (k1, k2) = x_hat[k1 + N1 k2] / sqrt(N1 N2), fp32.

    Operands are rounded to DT right before each product (the DFT matrices are stored in DT);
    products accumulate in fp32 and the twiddles are applied in fp32."""
    f1r, f1i = _load_mat(f1_ptr, N1, N1, N1 * N1)
    f1r, f1i = _rnd(f1r, DT), _rnd(f1i, DT)
    xr = _rnd(xr, DT)
    if REAL_IN:
        ar = tl.dot(f1r, xr, input_precision=PREC)
        ai = tl.dot(f1i, xr, input_precision=PREC)
    else:
        xi = _rnd(xi, DT)
        ar = tl.dot(f1r, xr, input_precision=PREC) - tl.dot(f1i, xi, input_precision=PREC)
        ai = tl.dot(f1r, xi, input_precision=PREC) + tl.dot(f1i, xr, input_precision=PREC)
    tr, ti = _load_mat(tw_ptr, N1, N2, N1 * N2)
    br = _rnd(ar * tr - ai * ti, DT)
    bi = _rnd(ar * ti + ai * tr, DT)
    f2r, f2i = _load_mat(f2_ptr, N2, N2, N2 * N2)
    f2r, f2i = _rnd(f2r, DT), _rnd(f2i, DT)
    yr = tl.dot(br, f2r, input_precision=PREC) - tl.dot(bi, f2i, input_precision=PREC)
    yi = tl.dot(br, f2i, input_precision=PREC) + tl.dot(bi, f2r, input_precision=PREC)
    return yr, yi


@triton.jit
def _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1: tl.constexpr, N2: tl.constexpr,
              REAL_OUT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Inverse of :func:`_fft2_fwd` (unitary, conjugate matrices), fp32 out; REAL_OUT: the real
    part only (returned twice)."""
    f2r, f2i = _load_mat(f2_ptr, N2, N2, N2 * N2)
    f2r, f2i = _rnd(f2r, DT), _rnd(f2i, DT)
    zr = _rnd(zr, DT)
    zi = _rnd(zi, DT)
    # Z @ conj(F2)
    br = tl.dot(zr, f2r, input_precision=PREC) + tl.dot(zi, f2i, input_precision=PREC)
    bi = tl.dot(zi, f2r, input_precision=PREC) - tl.dot(zr, f2i, input_precision=PREC)
    tr, ti = _load_mat(tw_ptr, N1, N2, N1 * N2)
    cr = _rnd(br * tr + bi * ti, DT)
    ci = _rnd(bi * tr - br * ti, DT)
    f1r, f1i = _load_mat(f1_ptr, N1, N1, N1 * N1)
    f1r, f1i = _rnd(f1r, DT), _rnd(f1i, DT)
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
def _job(j, NB, PAIR: tl.constexpr):
    """Job j -> (b, h) of its (first) row: jobs are h-major, so consecutive programs share a
    channel's filter spectrum (L2 reuse); with PAIR a job is batch rows (b, b + 1)."""
    h = j // NB
    b = j % NB
    if PAIR:
        b = b * 2
    return b.to(tl.int64), h.to(tl.int64), b


@triton.jit
def _fft_conv_fwd_kernel(x_ptr, xmul_ptr, spec_ptr, out_ptr, omul_ptr, f1_ptr, f2_ptr, tw_ptr,
                         B, H, NB, L, in_off, out_off, spec_bstride, sxb, sxh, smb, smh, sob, soh,
                         N1: tl.constexpr, N2: tl.constexpr, HAS_XMUL: tl.constexpr,
                         HAS_OMUL: tl.constexpr, CONJ: tl.constexpr, PAIR: tl.constexpr,
                         DT: tl.constexpr, PREC: tl.constexpr):
    """out[t] = omul[t] * (irfft(rfft(x*xmul placed at in_off) * spec))[out_off + t] for one
    (b, h) row, or with PAIR for rows (b, h) and (b+1, h) at once: when both use the same filter
    spectrum, z = x_0 + i x_1 needs ONE complex FFT, product and inverse, whose real and
    imaginary parts are the two results (8 instead of 12 matrix products a row).

    x, xmul, omul: any (batch, channel) strides with unit stride along L (Hyena's gates are
    channel slices of one projection: no copies); out is contiguous [B, H, L]."""
    b64, h64, b = _job(tl.program_id(0), NB, PAIR)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    t = n - in_off
    m = (t >= 0) & (t < L)
    x = _load_row(x_ptr, b64, h64, sxb, sxh, t, m, xmul_ptr, smb, smh, HAS_XMUL)
    if PAIR:
        L2 = tl.where(b + 1 < B, L, 0)  # the second row exists (odd B: not in the last pair)
        x2 = _load_row(x_ptr, b64 + 1, h64, sxb, sxh, t, (t >= 0) & (t < L2), xmul_ptr, smb, smh,
                       HAS_XMUL)
        yr, yi = _fft2_fwd(x, x2, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, DT, PREC)
    else:
        yr, yi = _fft2_fwd(x, x, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, DT, PREC)
    sp = spec_ptr + b64 * spec_bstride + h64 * (2 * N1 * N2)
    kr, ki = _load_mat(sp, N1, N2, N1 * N2)
    if CONJ:  # correlation (backward) = convolution with the conjugate spectrum
        ki = -ki
    zr = yr * kr - yi * ki
    zi = yr * ki + yi * kr
    y, y2 = _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, not PAIR, DT, PREC)
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
def _fft_conv_spectrum_kernel(x_ptr, xmul_ptr, bufr_ptr, bufi_ptr, f1_ptr, f2_ptr, tw_ptr, B, NB, j0, L,
                              in_off, sxb, sxh, smb, smh, N1: tl.constexpr, N2: tl.constexpr,
                              HAS_XMUL: tl.constexpr, PAIR: tl.constexpr, DT: tl.constexpr,
                              PREC: tl.constexpr):
    """Spectrum (kernels' order, unitary) of job j0 + program_id(0): row (b, h) of x * xmul placed
    at in_off, or with PAIR rows b, b + 1 as real and imaginary parts, into the job's scratch slot.
    The dk backward's first step (one complex spectrum live: no spills at 64 x 64 tiles)."""
    jl = tl.program_id(0)
    b64, h64, b = _job(j0 + jl, NB, PAIR)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    t = n - in_off
    m = (t >= 0) & (t < L)
    x = _load_row(x_ptr, b64, h64, sxb, sxh, t, m, xmul_ptr, smb, smh, HAS_XMUL)
    if PAIR:
        L2 = tl.where(b + 1 < B, L, 0)
        x2 = _load_row(x_ptr, b64 + 1, h64, sxb, sxh, t, (t >= 0) & (t < L2), xmul_ptr, smb, smh,
                       HAS_XMUL)
        yr, yi = _fft2_fwd(x, x2, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, DT, PREC)
    else:
        yr, yi = _fft2_fwd(x, x, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, DT, PREC)
    o = jl.to(tl.int64) * (N1 * N2) + n
    tl.store(bufr_ptr + o, yr.to(bufr_ptr.dtype.element_ty))
    tl.store(bufi_ptr + o, yi.to(bufi_ptr.dtype.element_ty))


@triton.jit
def _fft_conv_real_inverse_kernel(accr_ptr, acci_ptr, out_ptr, f1_ptr, f2_ptr, tw_ptr, Lout, scale,
                                  N1: tl.constexpr, N2: tl.constexpr, DT: tl.constexpr,
                                  PREC: tl.constexpr):
    """out[row, :Lout] = real part of the inverse (unitary) transform of scale * acc[row]."""
    row = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    zr = tl.load(accr_ptr + row * (N1 * N2) + n) * scale
    zi = tl.load(acci_ptr + row * (N1 * N2) + n) * scale
    y, _ = _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, True, DT, PREC)
    tl.store(out_ptr + row * Lout + n, y.to(out_ptr.dtype.element_ty), mask=n < Lout)


@triton.jit
def _fft_conv_outer_fwd_kernel(x_ptr, xmul_ptr, bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, B, NB, j0, L,
                               in_off, sxb, sxh, smb, smh, P: tl.constexpr, M: tl.constexpr,
                               BM: tl.constexpr, HAS_XMUL: tl.constexpr, PAIR: tl.constexpr,
                               DT: tl.constexpr, PREC: tl.constexpr):
    """Outer step of the four-step FFT for job j0 + program_id(0) (one row, or with PAIR rows
    b, b + 1 as the real and imaginary parts): P-point DFTs of columns x[M p + m], times
    w_N^(k_p m), into the job's scratch slot (scratch dtype)."""
    jl = tl.program_id(0)
    mb = tl.program_id(1)
    b64, h64, b = _job(j0 + jl, NB, PAIR)
    p = tl.arange(0, P)[None, :]
    mc = mb * BM + tl.arange(0, BM)[:, None]
    t = p * M + mc - in_off
    msk = (t >= 0) & (t < L)
    x = _rnd(_load_row(x_ptr, b64, h64, sxb, sxh, t, msk, xmul_ptr, smb, smh, HAS_XMUL), DT)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    fr, fi = _rnd(fr, DT), _rnd(fi, DT)
    if PAIR:
        L2 = tl.where(b + 1 < B, L, 0)
        x2 = _rnd(_load_row(x_ptr, b64 + 1, h64, sxb, sxh, t, (t >= 0) & (t < L2), xmul_ptr, smb,
                            smh, HAS_XMUL), DT)
        ar = tl.dot(x, fr, input_precision=PREC) - tl.dot(x2, fi, input_precision=PREC)
        ai = tl.dot(x2, fr, input_precision=PREC) + tl.dot(x, fi, input_precision=PREC)
    else:
        ar = tl.dot(x, fr, input_precision=PREC)
        ai = tl.dot(x, fi, input_precision=PREC)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    o = jl.to(tl.int64) * (P * M) + p * M + mc
    tl.store(bufr_ptr + o, (ar * tr - ai * ti).to(bufr_ptr.dtype.element_ty))
    tl.store(bufi_ptr + o, (ar * ti + ai * tr).to(bufi_ptr.dtype.element_ty))


@triton.jit
def _fft_conv_outer_cfwd_kernel(bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, P: tl.constexpr,
                                M: tl.constexpr, BM: tl.constexpr, DT: tl.constexpr,
                                PREC: tl.constexpr):
    """A further level on complex data, in place: each length-P*M sequence -> P-point DFTs of its
    columns, times w_(P M)^(k_p m)."""
    seq = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[None, :]
    mc = mb * BM + tl.arange(0, BM)[:, None]
    o = seq.to(tl.int64) * (P * M) + p * M + mc
    xr = _rnd(tl.load(bufr_ptr + o), DT)
    xi = _rnd(tl.load(bufi_ptr + o), DT)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    fr, fi = _rnd(fr, DT), _rnd(fi, DT)
    ar = tl.dot(xr, fr, input_precision=PREC) - tl.dot(xi, fi, input_precision=PREC)
    ai = tl.dot(xi, fr, input_precision=PREC) + tl.dot(xr, fi, input_precision=PREC)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    tl.store(bufr_ptr + o, (ar * tr - ai * ti).to(bufr_ptr.dtype.element_ty))
    tl.store(bufi_ptr + o, (ar * ti + ai * tr).to(bufi_ptr.dtype.element_ty))


@triton.jit
def _fft_conv_outer_cinv_kernel(bufr_ptr, bufi_ptr, fp_ptr, tw_ptr, P: tl.constexpr,
                                M: tl.constexpr, BM: tl.constexpr, DT: tl.constexpr,
                                PREC: tl.constexpr):
    """Inverse of :func:`_fft_conv_outer_cfwd_kernel` (unitary), in place."""
    seq = tl.program_id(0)
    mb = tl.program_id(1)
    p = tl.arange(0, P)[None, :]
    mc = mb * BM + tl.arange(0, BM)[:, None]
    o = seq.to(tl.int64) * (P * M) + p * M + mc
    br = tl.load(bufr_ptr + o).to(tl.float32)
    bi = tl.load(bufi_ptr + o).to(tl.float32)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    cr = _rnd(br * tr + bi * ti, DT)
    ci = _rnd(bi * tr - br * ti, DT)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    fr, fi = _rnd(fr, DT), _rnd(fi, DT)
    yr = tl.dot(cr, fr, input_precision=PREC) + tl.dot(ci, fi, input_precision=PREC)
    yi = tl.dot(ci, fr, input_precision=PREC) - tl.dot(cr, fi, input_precision=PREC)
    tl.store(bufr_ptr + o, yr.to(bufr_ptr.dtype.element_ty))
    tl.store(bufi_ptr + o, yi.to(bufi_ptr.dtype.element_ty))


@triton.jit
def _fft_conv_inner_kernel(bufr_ptr, bufi_ptr, spec_ptr, f1_ptr, f2_ptr, tw_ptr, NB, j0,
                           spec_bstride, P: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
                           MODE: tl.constexpr, CONJ: tl.constexpr, DT: tl.constexpr,
                           PREC: tl.constexpr):
    """Job (local slot), k_p (over all outer levels, P = their product), in place. MODE 0: inner
    M-point FFT, times the filter spectrum, inverse; 1: forward FFT only; 2: inverse only.
    Consecutive programs are consecutive jobs: the same channel, the same spectrum slice."""
    row = tl.program_id(0)
    kp = tl.program_id(1)
    n = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    o = (row.to(tl.int64) * P + kp) * (N1 * N2) + n
    zr = tl.load(bufr_ptr + o).to(tl.float32)
    zi = tl.load(bufi_ptr + o).to(tl.float32)
    if MODE != 2:
        zr, zi = _fft2_fwd(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, DT, PREC)
    if MODE == 0:
        j = j0 + row
        b = (j % NB).to(tl.int64)  # only used with a per-sample spectrum (no pairs, NB = B)
        h = (j // NB).to(tl.int64)
        sp = spec_ptr + b * spec_bstride + h * (2 * P * N1 * N2) + kp * (N1 * N2)
        kr, ki = _load_mat(sp, N1, N2, P * N1 * N2)
        if CONJ:
            ki = -ki
        yr = zr * kr - zi * ki
        zi = zr * ki + zi * kr
        zr = yr
    if MODE != 1:
        zr, zi = _fft2_inv(zr, zi, f1_ptr, f2_ptr, tw_ptr, N1, N2, False, DT, PREC)
    tl.store(bufr_ptr + o, zr.to(bufr_ptr.dtype.element_ty))
    tl.store(bufi_ptr + o, zi.to(bufi_ptr.dtype.element_ty))


@triton.jit
def _fft_conv_outer_inv_kernel(bufr_ptr, bufi_ptr, out_ptr, omul_ptr, fp_ptr, tw_ptr, B, NB, j0, L,
                               out_off, sob, soh, smb, smh, P: tl.constexpr, M: tl.constexpr,
                               BM: tl.constexpr, HAS_OMUL: tl.constexpr, PAIR: tl.constexpr,
                               DT: tl.constexpr, PREC: tl.constexpr):
    """Inverse outer step: conj twiddles, conj(F_P) @ B, real part (with PAIR also the imaginary
    part, the second row), output window and gate."""
    jl = tl.program_id(0)
    mb = tl.program_id(1)
    b64, h64, b = _job(j0 + jl, NB, PAIR)
    p = tl.arange(0, P)[None, :]
    mc = mb * BM + tl.arange(0, BM)[:, None]
    o = jl.to(tl.int64) * (P * M) + p * M + mc
    br = tl.load(bufr_ptr + o).to(tl.float32)
    bi = tl.load(bufi_ptr + o).to(tl.float32)
    tr = tl.load(tw_ptr + p * M + mc)
    ti = tl.load(tw_ptr + P * M + p * M + mc)
    cr = _rnd(br * tr + bi * ti, DT)
    ci = _rnd(bi * tr - br * ti, DT)
    fr, fi = _load_mat(fp_ptr, P, P, P * P)
    fr, fi = _rnd(fr, DT), _rnd(fi, DT)
    y = tl.dot(cr, fr, input_precision=PREC) + tl.dot(ci, fi, input_precision=PREC)
    t = p * M + mc - out_off
    msk = (t >= 0) & (t < L)
    if HAS_OMUL:
        y = y * tl.load(omul_ptr + b64 * smb + h64 * smh + t, mask=msk, other=0.0).to(tl.float32)
    tl.store(out_ptr + b64 * sob + h64 * soh + t, y.to(out_ptr.dtype.element_ty), mask=msk)
    if PAIR:
        y2 = tl.dot(ci, fr, input_precision=PREC) - tl.dot(cr, fi, input_precision=PREC)
        L2 = tl.where(b + 1 < B, L, 0)  # odd B: the last pair has one row
        m2 = (t >= 0) & (t < L2)
        if HAS_OMUL:
            y2 = y2 * tl.load(omul_ptr + (b64 + 1) * smb + h64 * smh + t, mask=m2, other=0.0).to(tl.float32)
        tl.store(out_ptr + (b64 + 1) * sob + h64 * soh + t, y2.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _cross_spectrum_acc_kernel(ar_ptr, ai_ptr, br_ptr, bi_ptr, accr_ptr, acci_ptr, j0, j1, G, N,
                               BLOCK: tl.constexpr):
    """acc[g] += sum over the chunk's jobs j in [j0, j1) with j // G == g of A_j conj(B_j): the
    dk backward's sum over the batch, on the GPU (one program per group and block of N)."""
    g = j0 // G + tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    lo = tl.maximum(j0, g * G)
    hi = tl.minimum(j1, (g + 1) * G)
    sr = tl.zeros([BLOCK], dtype=tl.float32)
    si = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(lo, hi):
        o = (j - j0).to(tl.int64) * N + offs
        xr = tl.load(ar_ptr + o).to(tl.float32)
        xi = tl.load(ai_ptr + o).to(tl.float32)
        yr = tl.load(br_ptr + o).to(tl.float32)
        yi = tl.load(bi_ptr + o).to(tl.float32)
        sr += xr * yr + xi * yi
        si += xi * yr - xr * yi
    go = g.to(tl.int64) * N + offs
    tl.store(accr_ptr + go, tl.load(accr_ptr + go) + sr)
    tl.store(acci_ptr + go, tl.load(acci_ptr + go) + si)


# ----------------------------------------------------------------------------------------------
# launch configuration (one place: the launchers and sm90_launches below both use it)
# ----------------------------------------------------------------------------------------------
def _prec(device) -> str:
    return "tf32x3" if device.type == "cuda" else "ieee"


def _fused_warps(N: int, fp32: bool) -> int:
    # 16 warps (128 registers a thread) spill more than 8 even for fp32's tf32x3 (measured)
    return 8 if N >= 2048 else 4


def _outer_bm(P: int, Mi: int) -> int:
    # the outer kernels work on transposed [BM, P] tiles (x^T F, F symmetric): BM is the MMA's
    # M dimension, and wgmma needs M = 64 per warpgroup (P = 16 as M fell back to mma.sync)
    return min(Mi, 64)


def _outer_warps(P: int) -> int:
    return 4


def _inner_warps(M: int) -> int:
    return 8 if M >= 2048 else 4


ACC_BLOCK = 1024  # cross-spectrum accumulation: elements per program


def poison_outputs() -> bool:
    """Fill outputs with NaN before the kernels run (every element must then be written): in
    the interpreter (tests) or with ``OMICSKERN_DEBUG_POISON=1``; never otherwise (it costs a
    full extra write)."""
    return os.environ.get("OMICSKERN_DEBUG_POISON", "") == "1" or os.environ.get("TRITON_INTERPRET", "") == "1"


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _unit_last(t):
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _pipeline(x, xmul, spec, omul, in_off, out_off, pl, out_dtype, spec_batched, conj=False):
    """out = omul * window(irfft(rfft(frame(x * xmul, in_off)) * spec), out_off); x: [B, H, L]."""
    B, H, L = x.shape
    dev = x.device
    out = torch.empty(B, H, L, dtype=out_dtype, device=dev)
    if poison_outputs():
        out.fill_(float("nan"))
    prec = _prec(dev)
    odt = operand_dtype(x.dtype)
    N = pl["N"]
    spec_bstride = H * 2 * N if spec_batched else 0
    pair = PAIR_ROWS and not spec_batched and B > 1  # two rows share one filter spectrum
    NB = triton.cdiv(B, 2) if pair else B
    jobs = H * NB
    x, xmul, omul = (_unit_last(t) for t in (x, xmul, omul))
    xmul_, omul_ = (t if t is not None else x for t in (xmul, omul))
    if pl["fused"]:
        N1, N2 = pl["N1"], pl["N2"]
        _fft_conv_fwd_kernel[(jobs,)](
            x, xmul_, spec, out, omul_, _dft(N1, odt, dev), _dft(N2, odt, dev), _twiddle(N1, N2, N, dev),
            B, H, NB, L, in_off, out_off, spec_bstride, x.stride(0), x.stride(1), xmul_.stride(0),
            xmul_.stride(1), omul_.stride(0), omul_.stride(1), N1=N1, N2=N2, HAS_XMUL=xmul is not None,
            HAS_OMUL=omul is not None, CONJ=conj, PAIR=pair, DT=_TL[odt], PREC=prec,
            num_warps=_fused_warps(N, odt == torch.float32))
        return out
    chunk = max(1, min(jobs, SCRATCH_BYTES // (2 * N * odt.itemsize)))
    ml = _MultiLevel(pl, dev, chunk, odt)
    for j0 in range(0, jobs, chunk):
        n = min(jobs, j0 + chunk) - j0
        ml.forward(x, xmul, B, NB, j0, n, in_off, pair, ml.bufr, ml.bufi)
        ml.inner(n, 0, ml.bufr, ml.bufi, spec, NB, j0, spec_bstride, conj)
        ml.inverse(n, ml.bufr, ml.bufi, out, omul, B, NB, j0, out_off, pair,
                   (H * L, L), (omul_.stride(0), omul_.stride(1)), L)
    return out


class _MultiLevel:
    """The large-N path's steps over a chunk of jobs and its scratch buffers ([chunk, N] re/im
    in the operand dtype: every consumer rounds to it before its next product anyway)."""

    def __init__(self, pl, dev, chunk, odt, nbuf=1):
        self.pl, self.dev, self.prec, self.odt = pl, dev, _prec(dev), odt
        N, Ps, M = pl["N"], pl["Ps"], pl["M"]
        # level i works on sequences of length S_i = N / (P_1 ... P_{i-1}) split as P_i x S_i / P_i
        self.lens = [N]
        for P in Ps:
            self.lens.append(self.lens[-1] // P)
        self.mats = [(_dft(P, odt, dev), _twiddle(P, S // P, S, dev)) for P, S in zip(Ps, self.lens)]
        self.inner_mats = (_dft(pl["N1"], odt, dev), _dft(pl["N2"], odt, dev),
                           _twiddle(pl["N1"], pl["N2"], M, dev))
        self.bufs = [torch.empty(chunk * N, dtype=odt, device=dev) for _ in range(2 * nbuf)]
        self.bufr, self.bufi = self.bufs[0], self.bufs[1]
        self.DT = _TL[odt]

    def forward(self, x, xmul, B, NB, j0, n, in_off, pair, bufr, bufi, inner=False):
        """Outer levels of the forward FFT of jobs [j0, j0 + n) of x [B, H, L] (times xmul) into
        bufr/bufi; with ``inner`` also the inner FFT (the full spectrum, in the kernels' order)."""
        L = x.shape[-1]
        Ps, lens, N, prec = self.pl["Ps"], self.lens, self.pl["N"], self.prec
        P, S = Ps[0], lens[0]
        xm = xmul if xmul is not None else x
        _fft_conv_outer_fwd_kernel[(n, (S // P) // _outer_bm(P, S // P))](
            x, xm, bufr, bufi, self.mats[0][0], self.mats[0][1], B, NB, j0, L, in_off,
            x.stride(0), x.stride(1), xm.stride(0), xm.stride(1), P=P, M=S // P,
            BM=_outer_bm(P, S // P), HAS_XMUL=xmul is not None, PAIR=pair, DT=self.DT, PREC=prec,
            num_warps=_outer_warps(P))
        for i in range(1, len(Ps)):
            P, S = Ps[i], lens[i]
            _fft_conv_outer_cfwd_kernel[(n * (N // S), (S // P) // _outer_bm(P, S // P))](
                bufr, bufi, self.mats[i][0], self.mats[i][1], P=P, M=S // P, BM=_outer_bm(P, S // P),
                DT=self.DT, PREC=prec, num_warps=_outer_warps(P))
        if inner:
            self.inner(n, 1, bufr, bufi)

    def inner(self, n, mode, bufr, bufi, spec=None, NB=1, j0=0, spec_bstride=0, conj=False):
        pl = self.pl
        f1, f2, twi = self.inner_mats
        nseq = pl["N"] // pl["M"]
        _fft_conv_inner_kernel[(n, nseq)](
            bufr, bufi, spec if spec is not None else bufr, f1, f2, twi, NB, j0, spec_bstride,
            P=nseq, N1=pl["N1"], N2=pl["N2"], MODE=mode, CONJ=conj, DT=self.DT, PREC=self.prec,
            num_warps=_inner_warps(pl["M"]))

    def inverse(self, n, bufr, bufi, out, omul, B, NB, j0, out_off, pair, out_strides, omul_strides,
                Lout, inner=False):
        """(With ``inner``: the inner inverse FFT, then) the outer levels backwards, the last one
        writing the real output window [out_off, out_off + Lout) of jobs [j0, j0 + n) (times omul)."""
        if inner:
            self.inner(n, 2, bufr, bufi)
        Ps, lens, N, prec = self.pl["Ps"], self.lens, self.pl["N"], self.prec
        for i in reversed(range(1, len(Ps))):
            P, S = Ps[i], lens[i]
            _fft_conv_outer_cinv_kernel[(n * (N // S), (S // P) // _outer_bm(P, S // P))](
                bufr, bufi, self.mats[i][0], self.mats[i][1], P=P, M=S // P, BM=_outer_bm(P, S // P),
                DT=self.DT, PREC=prec, num_warps=_outer_warps(P))
        P, S = Ps[0], lens[0]
        _fft_conv_outer_inv_kernel[(n, (S // P) // _outer_bm(P, S // P))](
            bufr, bufi, out, omul if omul is not None else out, self.mats[0][0], self.mats[0][1],
            B, NB, j0, Lout, out_off, out_strides[0], out_strides[1], omul_strides[0], omul_strides[1],
            P=P, M=S // P, BM=_outer_bm(P, S // P), HAS_OMUL=omul is not None, PAIR=pair, DT=self.DT,
            PREC=prec, num_warps=_outer_warps(P))


def _dk(dy, gate, u, Lk, offset, pl, k_batched):
    """fp32 [H, Lk] (or [B, H, Lk] for per-sample k): sum over the batch of the correlation of
    dz = dy * gate (placed at ``offset``) with u."""
    B, H, L = u.shape
    dev = u.device
    odt = operand_dtype(u.dtype)
    nacc = B * H if k_batched else H
    N = pl["N"]
    acc_scale = math.sqrt(N)  # unitary transforms: (F/sqrt N)(.) (F/sqrt N)(.) then F*/sqrt N
    # Spectra of dz and u for a chunk of (h-major) jobs (with a shared k, two batch rows per
    # complex spectrum: see _fft_conv_real_inverse_kernel's caller below), the cross-spectrum
    # summed over each channel's jobs by a kernel (no loop over the batch here), then one inverse
    # per accumulator row. Three kernels instead of one fused loop: the fused form kept two complex
    # spectra and the accumulator live and spilled on sm_90 at every size >= 1024.
    #
    # Pairing: with Z = DZ_0 + i DZ_1 and W = U_0 + i U_1, Z conj(W) = (DZ_0 conj U_0 +
    # DZ_1 conj U_1) + i (DZ_1 conj U_0 - DZ_0 conj U_1), the spectrum of (the wanted sum of
    # correlations) + i (a real signal): the real part of the inverse is the sum.
    pair = not k_batched and B > 1
    NB = triton.cdiv(B, 2) if pair else B
    G = 1 if k_batched else NB  # jobs per accumulator row (group)
    jobs = H * NB
    chunk = max(1, min(jobs, SCRATCH_BYTES // (4 * N * odt.itemsize)))
    acc = torch.zeros(2, nacc, N, dtype=torch.float32, device=dev)  # group order (h-major)
    dkg = torch.empty(nacc, Lk, dtype=torch.float32, device=dev)
    if poison_outputs():
        dkg.fill_(float("nan"))
    if pl["fused"]:
        N1, N2 = pl["N1"], pl["N2"]
        mats = (_dft(N1, odt, dev), _dft(N2, odt, dev), _twiddle(N1, N2, N, dev))
        bufs = [torch.empty(chunk * N, dtype=odt, device=dev) for _ in range(4)]
        common = dict(N1=N1, N2=N2, PAIR=pair, DT=_TL[odt], PREC=_prec(dev), num_warps=_fused_warps(N, False))
        for j0 in range(0, jobs, chunk):
            n = min(jobs, j0 + chunk) - j0
            g_ = gate if gate is not None else dy
            _fft_conv_spectrum_kernel[(n,)](dy, g_, bufs[0], bufs[1], *mats, B, NB, j0, L, offset,
                                            dy.stride(0), dy.stride(1), g_.stride(0), g_.stride(1),
                                            HAS_XMUL=gate is not None, **common)
            _fft_conv_spectrum_kernel[(n,)](u, u, bufs[2], bufs[3], *mats, B, NB, j0, L, 0,
                                            u.stride(0), u.stride(1), u.stride(0), u.stride(1),
                                            HAS_XMUL=False, **common)
            groups = (j0 + n - 1) // G - j0 // G + 1
            blk = min(ACC_BLOCK, N)
            _cross_spectrum_acc_kernel[(groups, N // blk)](
                *bufs, acc[0], acc[1], j0, j0 + n, G, N, BLOCK=blk, num_warps=4)
        _fft_conv_real_inverse_kernel[(nacc,)](acc[0], acc[1], dkg, *mats, Lk, acc_scale, N1=N1, N2=N2,
                                               DT=_TL[odt], PREC=_prec(dev), num_warps=_fused_warps(N, False))
        if k_batched:  # groups are (h, b): back to [B, H, Lk]
            return dkg.view(H, B, Lk).transpose(0, 1).contiguous()
        return dkg
    ml = _MultiLevel(pl, dev, chunk, odt, nbuf=2)
    for j0 in range(0, jobs, chunk):
        n = min(jobs, j0 + chunk) - j0
        ml.forward(dy, gate, B, NB, j0, n, offset, pair, ml.bufs[0], ml.bufs[1], inner=True)
        ml.forward(u, None, B, NB, j0, n, 0, pair, ml.bufs[2], ml.bufs[3], inner=True)
        groups = (j0 + n - 1) // G - j0 // G + 1
        blk = min(ACC_BLOCK, N)
        _cross_spectrum_acc_kernel[(groups, N // blk)](
            *ml.bufs, acc[0], acc[1], j0, j0 + n, G, N, BLOCK=blk, num_warps=4)
    acc.mul_(acc_scale)
    # the accumulators are the scratch of their own inverse (fp32 buffers), in row chunks
    chunk2 = max(1, min(nacc, SCRATCH_BYTES // (8 * N)))
    mli = _MultiLevel(pl, dev, 0, odt)
    for a0 in range(0, nacc, chunk2):
        n = min(nacc, a0 + chunk2) - a0
        mli.inverse(n, acc[0, a0:a0 + n], acc[1, a0:a0 + n], dkg, None, 1, 1, a0, 0, False,
                    (0, Lk), (0, 0), Lk, inner=True)
    if k_batched:  # groups are (h, b): back to [B, H, Lk]
        return dkg.view(H, B, Lk).transpose(0, 1).contiguous()
    return dkg


def fft_conv_fwd(u, k, bias, gate, causal):
    L = u.shape[-1]
    pl = plan(L, u.dtype)
    offset = 0 if causal else L - 1
    spec = filter_spectrum(k, bias, offset, pl)
    return _pipeline(u, None, spec, gate, 0, offset, pl, u.dtype, k.dim() == 3)


def fft_conv_bwd(dy, u, k, bias, gate, causal, needs):
    """Gradients, all by Triton kernels: du (the pipeline on dz = dy * gate with the conjugate
    filter spectrum), dgate (the pipeline without gate, times dy), dk and dbias (the cross-spectrum
    of dz and u summed over the batch, then one inverse FFT; dbias is its lag-0 tap)."""
    need_u, need_k, need_bias, need_gate = needs
    L = u.shape[-1]
    pl = plan(L, u.dtype)
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


# ----------------------------------------------------------------------------------------------
# Every configuration the launchers above can choose on sm_90, for the compile check
# (benchmarks/sm90_compile_check.py, tests/ops/test_sm90_compile.py).
# ----------------------------------------------------------------------------------------------
_TN = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# (HAS_XMUL, HAS_OMUL, CONJ) of the pipeline's callers: forward, forward with gate (and dgate),
# du with gate, du without gate
_PIPE_FLAGS = ((False, False, False), (False, True, False), (True, False, True), (False, False, True))


def _fused_sizes(dtype=torch.bfloat16):
    return [1 << e for e in range(int(math.log2(MIN_N)), int(math.log2(fused_max(dtype))) + 1)]


def _multi_plans(dtype=torch.bfloat16):
    """The distinct multi-level plans of every L <= MAX_L for inputs of ``dtype``."""
    out, N = {}, fused_max(dtype) * 2
    while N <= plan(MAX_L, dtype)["N"]:
        pl = plan(N // 2, dtype)
        out.setdefault(pl["N"], pl)
        N *= 2
    return list(out.values())


def sm90_launches(full: bool = True) -> list[dict]:
    """Launch descriptions of every kernel configuration the dispatch can choose on sm_90: the
    fused kernels for every FFT size up to :func:`fused_max`, the multi-level kernels of every plan
    up to MAX_L, for every input dtype and flag combination; ``full=False``: the subset below."""
    out = []
    for dt, tn in _TN.items():
        n0 = len(out)
        odt = operand_dtype(dt)
        fp32 = odt == torch.float32
        DT = _TL[odt]
        prec = "tf32x3"
        mma = "wgmma"
        xt = f"*{tn}"
        for N in _fused_sizes(dt):
            pl = plan(N // 2, dt)
            N1, N2 = pl["N1"], pl["N2"]
            for pair in (True, False):
                for xm, om, conj in _PIPE_FLAGS:
                    flags = "".join(f for f, on in ((" xmul", xm), (" omul", om), (" conj", conj), (" pair", pair)) if on)
                    out.append(dict(
                        kernel="fused", fn=_fft_conv_fwd_kernel,
                        types=dict(x_ptr=xt, xmul_ptr=xt, spec_ptr="*fp32", out_ptr=xt, omul_ptr=xt,
                                   f1_ptr=f"*{_TN[odt]}", f2_ptr=f"*{_TN[odt]}", tw_ptr="*fp32"),
                        constexprs=dict(N1=N1, N2=N2, HAS_XMUL=xm, HAS_OMUL=om, CONJ=conj, PAIR=pair,
                                        DT=DT, PREC=prec),
                        num_warps=_fused_warps(N, fp32), num_stages=3, mma=mma,
                        tags=f"N{N} ({N1}x{N2}) {tn}{flags}",
                        div16=["L", "sxb", "sxh", "smb", "smh", "sob", "soh", "spec_bstride"]))
            st = f"*{_TN[odt]}"
            for pair in (True, False):
                for xm in (True, False):
                    out.append(dict(
                        kernel="dk_spectrum", fn=_fft_conv_spectrum_kernel,
                        types=dict(x_ptr=xt, xmul_ptr=xt, bufr_ptr=st, bufi_ptr=st, f1_ptr=f"*{_TN[odt]}",
                                   f2_ptr=f"*{_TN[odt]}", tw_ptr="*fp32"),
                        constexprs=dict(N1=N1, N2=N2, HAS_XMUL=xm, PAIR=pair, DT=DT, PREC=prec),
                        num_warps=_fused_warps(N, fp32), num_stages=3, mma=mma,
                        tags=f"N{N} ({N1}x{N2}) {tn}{' xmul' if xm else ''}{' pair' if pair else ''}",
                        div16=["L", "sxb", "sxh", "smb", "smh"]))
            out.append(dict(
                kernel="dk_inverse", fn=_fft_conv_real_inverse_kernel,
                types=dict(accr_ptr="*fp32", acci_ptr="*fp32", out_ptr="*fp32", f1_ptr=f"*{_TN[odt]}",
                           f2_ptr=f"*{_TN[odt]}", tw_ptr="*fp32", scale="fp32"),
                constexprs=dict(N1=N1, N2=N2, DT=DT, PREC=prec),
                num_warps=_fused_warps(N, fp32), num_stages=3, mma=mma, tags=f"N{N} ({N1}x{N2}) {tn}"))
        seen = set()
        st = f"*{_TN[odt]}"
        for pl in _multi_plans(dt):
            lens = [pl["N"]]
            for P in pl["Ps"]:
                lens.append(lens[-1] // P)
            mat = f"*{_TN[odt]}"
            P, S = pl["Ps"][0], lens[0]
            M, BM = S // P, _outer_bm(P, S // P)
            # first / last level of every job: (kernel, fn, multiplier flag, its tag, pointer types, div16)
            ends = (("outer_fwd", _fft_conv_outer_fwd_kernel, "HAS_XMUL", " xmul",
                     dict(x_ptr=xt, xmul_ptr=xt, bufr_ptr=st, bufi_ptr=st), ["L", "sxb", "sxh", "smb", "smh"]),
                    ("outer_inv", _fft_conv_outer_inv_kernel, "HAS_OMUL", " omul",
                     dict(bufr_ptr=st, bufi_ptr=st, out_ptr=xt, omul_ptr=xt), ["L", "sob", "soh", "smb", "smh"]))
            for name, fn, flag, ftag, ptrs, div16 in ends:
                for mul in (False, True):
                    for pair in (True, False):
                        key = (name, P, M, mul, pair)
                        if key not in seen:
                            seen.add(key)
                            out.append(dict(
                                kernel=name, fn=fn, types=dict(ptrs, fp_ptr=mat, tw_ptr="*fp32"),
                                constexprs={"P": P, "M": M, "BM": BM, flag: mul, "PAIR": pair, "DT": DT, "PREC": prec},
                                num_warps=_outer_warps(P), num_stages=3, mma=mma,
                                tags=f"N{pl['N']} P{P} M{M} BM{BM} {tn}{ftag if mul else ''}{' pair' if pair else ''}",
                                div16=div16))
            # dk's final inverse: fp32 accumulators as scratch, fp32 output, no pairs
            key = ("oinv-dk", P, M)
            if key not in seen:
                seen.add(key)
                out.append(dict(
                    kernel="outer_inv", fn=_fft_conv_outer_inv_kernel,
                    types=dict(bufr_ptr="*fp32", bufi_ptr="*fp32", out_ptr="*fp32", omul_ptr="*fp32",
                               fp_ptr=mat, tw_ptr="*fp32"),
                    constexprs=dict(P=P, M=M, BM=BM, HAS_OMUL=False, PAIR=False, DT=DT, PREC=prec),
                    num_warps=_outer_warps(P), num_stages=3, mma=mma,
                    tags=f"N{pl['N']} P{P} M{M} BM{BM} {tn} dk (fp32 acc)", div16=["L", "soh"]))
            for i in range(1, len(pl["Ps"])):
                P, S = pl["Ps"][i], lens[i]
                M, BM = S // P, _outer_bm(P, S // P)
                for name, fn in (("outer_cfwd", _fft_conv_outer_cfwd_kernel), ("outer_cinv", _fft_conv_outer_cinv_kernel)):
                    for bt in ((st, "*fp32") if name == "outer_cinv" else (st,)):
                        key = (name, P, M, bt)
                        if key not in seen:
                            seen.add(key)
                            out.append(dict(
                                kernel=name, fn=fn, types=dict(bufr_ptr=bt, bufi_ptr=bt, fp_ptr=mat, tw_ptr="*fp32"),
                                constexprs=dict(P=P, M=M, BM=BM, DT=DT, PREC=prec),
                                num_warps=_outer_warps(P), num_stages=3, mma=mma,
                                tags=f"N{pl['N']} P{P} M{M} BM{BM} {tn}{' dk (fp32 acc)' if bt != st else ''}"))
            nseq = pl["N"] // pl["M"]
            for mode in (0, 1, 2):
                for conj in ((False, True) if mode == 0 else (False,)):
                    for bt in ((st, "*fp32") if mode == 2 else (st,)):
                        key = ("inner", pl["N"], mode, conj, bt)
                        if key not in seen:
                            seen.add(key)
                            out.append(dict(
                                kernel="inner", fn=_fft_conv_inner_kernel,
                                types=dict(bufr_ptr=bt, bufi_ptr=bt, spec_ptr="*fp32", f1_ptr=mat, f2_ptr=mat,
                                           tw_ptr="*fp32"),
                                constexprs=dict(P=nseq, N1=pl["N1"], N2=pl["N2"], MODE=mode, CONJ=conj, DT=DT, PREC=prec),
                                num_warps=_inner_warps(pl["M"]), num_stages=3, mma=mma,
                                tags=f"N{pl['N']} P{nseq} M{pl['M']} ({pl['N1']}x{pl['N2']}) {tn} mode{mode}"
                                     f"{' conj' if conj else ''}{' dk (fp32 acc)' if bt != st else ''}",
                                div16=["spec_bstride"]))
        for blk in sorted({min(ACC_BLOCK, n) for n in _fused_sizes(dt)} | {ACC_BLOCK}):
            out.append(dict(kernel="dk_acc", fn=_cross_spectrum_acc_kernel,
                            types=dict(ar_ptr=st, ai_ptr=st, br_ptr=st, bi_ptr=st, accr_ptr="*fp32",
                                       acci_ptr="*fp32"),
                            constexprs=dict(BLOCK=blk), num_warps=4, num_stages=3, mma=None,
                            tags=f"{tn} scratch{'' if blk == ACC_BLOCK else f' BLOCK{blk}'}", div16=["N"]))
        for la in out[n0:]:
            la["input_dtype"] = dt  # the inputs whose plans launch it (not a compile field)
    for la in out:
        # wgmma needs an M dimension of 64 per warpgroup: tiles with N1 < 64 rows use mma.sync
        if la["kernel"] in ("fused", "dk_spectrum", "dk_inverse", "inner") and la["constexprs"]["N1"] < 64:
            la["mma"] = "mma"
    return out if full else [la for la in out if f"{la['kernel']} {la['tags']}" in _SUBSET]


# The test suite's representative subset (largest bf16 fused forward, the fp32 path's largest fused
# kernel and its 1M-token inner kernel, the L = 32k multi-level kernels, the batch accumulation).
_SUBSET = {"fused N4096 (64x64) bf16 omul pair", "fused N512 (32x16) fp32 xmul conj pair",
           "inner N2097152 P4096 M512 (32x16) fp32 mode0",
           "outer_fwd N65536 P16 M4096 BM64 bf16 pair", "outer_inv N65536 P16 M4096 BM64 bf16 omul pair",
           "inner N65536 P16 M4096 (64x64) bf16 mode0", "dk_acc bf16 scratch",
           "dk_spectrum N4096 (64x64) bf16 xmul pair", "dk_inverse N4096 (64x64) bf16"}
