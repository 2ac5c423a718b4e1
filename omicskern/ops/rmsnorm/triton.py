"""Triton kernels for ``rms_norm`` (with the fused residual add).

One program normalises BLOCK_R rows of C <= 16384 channels held in registers, in fp32 (fp64 for
fp64 inputs): ``s = x + residual``, ``rstd = 1/sqrt(sum(s^2)/C + eps)``, ``y = s rstd w``; it writes
y, s (when asked) and rstd. Backward recomputes nothing but ``s rstd`` from the saved s and rstd::

    ds = rstd (w dy) - s rstd^3 mean(w dy s)  (+ the cotangent of the returned s)
    dw = sum over rows of dy s rstd           (per-program partials, reduced in torch)

dx = dresidual = ds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_C = 16384


def unsupported_reason(C: int) -> str | None:
    return None if C <= MAX_C else f"the Triton rms_norm keeps a row in registers: C <= {MAX_C} (got {C})"


@triton.jit
def _fwd_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, rstd_ptr, R, C, eps, HAS_RES: tl.constexpr,
                STORE_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.arange(0, BLOCK_C)[None, :]
    m = (rows < R) & (cols < C)
    off = rows.to(tl.int64) * C + cols
    s = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
    if HAS_RES:
        s += tl.load(r_ptr + off, mask=m, other=0.0).to(ACC)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(ACC)
    tl.store(y_ptr + off, (s * rstd[:, None] * w).to(y_ptr.dtype.element_ty), mask=m)
    if STORE_S:
        tl.store(s_ptr + off, s.to(s_ptr.dtype.element_ty), mask=m)
    rv = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tl.store(rstd_ptr + rv, rstd, mask=rv < R)


@triton.jit
def _bwd_kernel(dy_ptr, ds_ptr, s_ptr, w_ptr, rstd_ptr, dx_ptr, dwp_ptr, R, C, HAS_DS: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.arange(0, BLOCK_C)[None, :]
    m = (rows < R) & (cols < C)
    off = rows.to(tl.int64) * C + cols
    s = tl.load(s_ptr + off, mask=m, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(ACC)
    rv = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rstd = tl.load(rstd_ptr + rv, mask=rv < R, other=0.0)[:, None]
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(ACC)
    wdy = w * dy
    c = tl.sum(wdy * s, axis=1)[:, None] / C
    ds = rstd * wdy - s * rstd * rstd * rstd * c
    if HAS_DS:
        ds += tl.load(ds_ptr + off, mask=m, other=0.0).to(ACC)
    tl.store(dx_ptr + off, ds.to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(dwp_ptr + pid * C + cols, tl.sum(dy * s * rstd, axis=0)[None, :], mask=cols < C)


def _acc(x):
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(R, C):
    """(BLOCK_R, BLOCK_C, num_warps): a program holds ~2048 elements per tensor on 4 warps (16 per
    thread; the backward keeps ~6 such tiles live), rows wider than that get 1 row and more warps.
    At 8192 elements per program the sm_90 build spilled (0.1-1 KB at C = 256 and 1024)."""
    BC = triton.next_power_of_2(max(C, 1))
    BR = max(1, min(64, 2048 // BC, triton.next_power_of_2(max(R, 1))))
    warps = min(16, max(4, BC // 512))
    return BR, BC, warps


class RmsNormTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, return_residual, residual_dtype):
        shape, C = x.shape, x.shape[-1]
        x2 = x.reshape(-1, C).contiguous()
        r2 = residual.reshape(-1, C).contiguous() if residual is not None else None
        R = x2.shape[0]
        acc, tacc = _acc(x)
        sdt = residual_dtype or (residual.dtype if residual is not None else x.dtype)
        y = torch.empty_like(x2)
        # s is kept for the backward in the accumulation dtype (exact) unless it is returned
        s = torch.empty(R, C, dtype=sdt if return_residual else tacc, device=x.device)
        rstd = torch.empty(R, dtype=tacc, device=x.device)
        BR, BC, warps = _blocks(R, C)
        _fwd_kernel[(triton.cdiv(R, BR),)](x2, r2 if r2 is not None else x2, weight.contiguous(), y, s, rstd, R, C,
                                           float(eps), HAS_RES=r2 is not None, STORE_S=True, BLOCK_R=BR,
                                           BLOCK_C=BC, ACC=acc, num_warps=warps)
        ctx.save_for_backward(s, weight, rstd)
        ctx.meta = (shape, residual is not None, return_residual)
        ctx.mark_non_differentiable(rstd)
        return y.reshape(shape), s.reshape(shape)

    @staticmethod
    def backward(ctx, dy, ds):
        s, weight, rstd = ctx.saved_tensors
        shape, has_res, return_residual = ctx.meta
        R, C = s.shape
        acc, tacc = _acc(s if s.dtype == torch.float64 else dy)
        dy2 = dy.reshape(R, C).contiguous()
        ds2 = ds.reshape(R, C).contiguous() if (return_residual and ds is not None) else None
        dx = torch.empty(R, C, dtype=dy.dtype, device=dy.device)
        BR, BC, warps = _blocks(R, C)
        nprog = triton.cdiv(R, BR)
        dwp = torch.empty(nprog, C, dtype=tacc, device=dy.device)
        _bwd_kernel[(nprog,)](dy2, ds2 if ds2 is not None else dy2, s, weight.contiguous(), rstd, dx, dwp, R, C,
                              HAS_DS=ds2 is not None, BLOCK_R=BR, BLOCK_C=BC, ACC=acc, num_warps=warps)
        dw = dwp.sum(0).to(weight.dtype)
        dx = dx.reshape(shape)
        return dx, dw, (dx if has_res else None), None, None, None


def rms_norm_triton(x, weight, residual=None, eps=1e-5, return_residual=False, residual_dtype=None):
    """Same contract as :func:`omicskern.ops.rmsnorm.rms_norm` (arguments validated)."""
    y, s = RmsNormTritonFn.apply(x, weight, residual, eps, return_residual, residual_dtype)
    return (y, s) if return_residual else y


# -- the sm_90 compile check (benchmarks/sm90_compile_check.py, tests/ops/test_sm90_compile.py) -------
def sm90_launches(full: bool = True) -> list[dict]:
    """The forward (with and without the residual add) and backward launches for hidden sizes a
    model uses (blocks and warps from :func:`_blocks` at many rows; 3 stages), per
    dtype, accumulation in fp32. ``full=False``: bf16 at C = 256 (Caduceus PS) and 1024. No MMA."""
    out = []
    for C in ((128, 256, 512, 768, 1024, 2048, 4096, 8192) if full else (256, 1024, 8192)):
        BR, BC, warps = _blocks(1 << 20, C)
        for tn in (("bf16", "fp16", "fp32") if full else ("bf16",)):
            for res in ((False, True) if full else (True,)):
                out.append(dict(kernel="rmsnorm_fwd", fn=_fwd_kernel,
                                types=dict(x_ptr=f"*{tn}", r_ptr=f"*{tn}", w_ptr=f"*{tn}", y_ptr=f"*{tn}",
                                           s_ptr="*fp32", rstd_ptr="*fp32", eps="fp32"),
                                constexprs=dict(HAS_RES=res, STORE_S=True, BLOCK_R=BR, BLOCK_C=BC, ACC=tl.float32),
                                num_warps=warps, num_stages=3, mma=None,
                                tags=f"C{C} {tn}{' +residual' if res else ''}"))
            out.append(dict(kernel="rmsnorm_bwd", fn=_bwd_kernel,
                            types=dict(dy_ptr=f"*{tn}", ds_ptr=f"*{tn}", s_ptr="*fp32", w_ptr=f"*{tn}",
                                       rstd_ptr="*fp32", dx_ptr=f"*{tn}", dwp_ptr="*fp32"),
                            constexprs=dict(HAS_DS=True, BLOCK_R=BR, BLOCK_C=BC, ACC=tl.float32),
                            num_warps=warps, num_stages=3, mma=None, tags=f"C{C} {tn}"))
    return out
