"""Fused rotary-embedding Triton kernel (both pair conventions), forward and backward.

One program rotates ``BLOCK_T`` rows of one head of one sequence: positions come from
``cu_seqlens`` (a padded batch is the equal-length case) plus a per-sequence offset, cos/sin are read
once per row and applied in float32. The backward is the inverse rotation (``sin -> -sin``), the
same kernel. Registered as the ``omicskern::rotary`` custom op with a fake implementation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omicskern.ops import backends


@triton.jit
def _rotary_fwd_kernel(X, OUT, COS, SIN, CU, OFFS,
                       stride_xt, stride_xh, stride_ot, stride_oh, stride_c, n_pos,
                       HALF: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr,
                       CONJ: tl.constexpr):
    pid_t = tl.program_id(0)
    n = tl.program_id(1)
    h = tl.program_id(2)
    start = tl.load(CU + n).to(tl.int64)
    L = (tl.load(CU + n + 1) - tl.load(CU + n)).to(tl.int32)
    if pid_t * BLOCK_T >= L:
        return
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < L
    pos = t + tl.load(OFFS + n)
    # A position past the cos/sin table reads NaN, so an undersized table cannot pass silently.
    p_ok = t_ok & (pos >= 0) & (pos < n_pos)
    j = tl.arange(0, BLOCK_R)
    j_ok = j < HALF
    cs_mask = p_ok[:, None] & j_ok[None, :]
    c = tl.load(COS + pos[:, None] * stride_c + j[None, :], mask=cs_mask, other=float("nan")).to(tl.float32)
    s = tl.load(SIN + pos[:, None] * stride_c + j[None, :], mask=cs_mask, other=float("nan")).to(tl.float32)
    if CONJ:
        s = -s
    if INTERLEAVED:
        ia = 2 * j
        ib = 2 * j + 1
    else:
        ia = j
        ib = j + HALF
    rows = start + t
    m = t_ok[:, None] & j_ok[None, :]
    xrow = X + rows[:, None] * stride_xt + h * stride_xh
    orow = OUT + rows[:, None] * stride_ot + h * stride_oh
    a = tl.load(xrow + ia[None, :], mask=m, other=0.0).to(tl.float32)
    b = tl.load(xrow + ib[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(orow + ia[None, :], (a * c - b * s).to(OUT.dtype.element_ty), mask=m)
    tl.store(orow + ib[None, :], (a * s + b * c).to(OUT.dtype.element_ty), mask=m)
    if HEAD_DIM > 2 * HALF:  # dims past the rotary dim pass through
        d = 2 * HALF + tl.arange(0, BLOCK_P)
        mp = t_ok[:, None] & (d < HEAD_DIM)[None, :]
        tl.store(orow + d[None, :], tl.load(xrow + d[None, :], mask=mp), mask=mp)


@torch.library.custom_op("omicskern::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
           offsets: torch.Tensor, max_seqlen: int, interleaved: bool, conjugate: bool) -> torch.Tensor:
    """x: [T, H, D] packed rows; cos/sin: [P, R/2]; cu_seqlens, offsets: int32 [N+1], [N]."""
    T, H, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
    N = cu_seqlens.numel() - 1
    if T == 0 or N == 0 or max_seqlen == 0 or H == 0:
        return out
    half = cos.shape[1]
    block_t = 64 if backends.triton_interpret() else 32
    grid = (triton.cdiv(max_seqlen, block_t), N, H)
    _rotary_fwd_kernel[grid](
        x, out, cos, sin, cu_seqlens, offsets, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        cos.stride(0), cos.shape[0], HALF=half, HEAD_DIM=D, BLOCK_T=block_t,
        BLOCK_R=triton.next_power_of_2(half), BLOCK_P=triton.next_power_of_2(max(D - 2 * half, 1)),
        INTERLEAVED=interleaved, CONJ=conjugate, num_warps=4)
    return out


@rotary.register_fake
def _(x, cos, sin, cu_seqlens, offsets, max_seqlen, interleaved, conjugate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, cos, sin, cu_seqlens, offsets, max_seqlen, interleaved, conjugate = inputs
    ctx.save_for_backward(cos, sin, cu_seqlens, offsets)
    ctx.args = (max_seqlen, interleaved, conjugate)


def _backward(ctx, grad):
    # A rotation's adjoint is the inverse rotation.
    cos, sin, cu_seqlens, offsets = ctx.saved_tensors
    max_seqlen, interleaved, conjugate = ctx.args
    gx = rotary(grad, cos, sin, cu_seqlens, offsets, max_seqlen, interleaved, not conjugate)
    return gx, None, None, None, None, None, None, None


rotary.register_autograd(_backward, setup_context=_setup_context)


def apply_rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                        interleaved: bool = False, cu_seqlens: torch.Tensor | None = None,
                        seqlen_offset: int | torch.Tensor = 0, max_seqlen: int | None = None) -> torch.Tensor:
    """Layout handling for :func:`omicskern.ops.rotary.apply_rotary` (arguments already validated)."""
    if cu_seqlens is not None:
        N = cu_seqlens.numel() - 1
        if max_seqlen is not None:
            max_len = int(max_seqlen)
        else:
            lens = cu_seqlens[1:] - cu_seqlens[:-1]
            max_len = int(lens.max().item()) if N > 0 else 0
        cu = cu_seqlens.to(torch.int32).contiguous()
        xf = x
    else:
        B, L, H, D = x.shape
        N, max_len = B, L
        cu = torch.arange(0, B + 1, device=x.device, dtype=torch.int32) * L
        xf = x.reshape(B * L, H, D)
    if isinstance(seqlen_offset, torch.Tensor):
        offs = seqlen_offset.to(device=x.device, dtype=torch.int32).contiguous()
    else:
        offs = torch.full((N,), int(seqlen_offset), device=x.device, dtype=torch.int32)
    out = rotary(xf, cos, sin, cu, offs, max_len, interleaved, False)
    return out.view(x.shape)
