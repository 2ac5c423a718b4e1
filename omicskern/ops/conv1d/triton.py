"""Triton kernels for ``causal_conv1d`` (depthwise, K <= 8 taps, optional fused SiLU).

Programs work on [BLOCK_C channels x BLOCK_L positions] tiles of one sequence and read x through
its (batch, channel, position) strides, so both [B, C, L] and channel-last views such as
``in_proj(u).transpose(1, 2)`` (Hyena) are read in place, coalesced along whichever axis is
contiguous; outputs are contiguous [B, C, L]. The K taps are unrolled and accumulate in fp32
(fp64 for fp64 inputs). Backward in two kernels: the first recomputes the pre-activation, forms
dz = dy * act'(z), writes it and per-tile partial sums for dweight and dbias (reduced in torch,
deterministic); the second computes dx[t] = sum_j w[j] dz[t + K-1-j].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 8


def unsupported_reason(K: int) -> str | None:
    return None if 1 <= K <= MAX_K else f"the Triton causal_conv1d supports K <= {MAX_K}"


@triton.jit
def _preact(x_ptr, w_ptr, b_ptr, xb, c, t, cm, L, sxc, sxl, K: tl.constexpr,
            HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    acc = tl.zeros([c.shape[0], t.shape[1]], dtype=ACC)
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        xv = tl.load(x_ptr + xb + c * sxc + s * sxl, mask=cm & (s >= 0) & (s < L), other=0.0).to(ACC)
        acc += tl.load(w_ptr + c * K + j, mask=cm, other=0.0).to(ACC) * xv
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cm, other=0.0).to(ACC)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, L, sxb, sxc, sxl, K: tl.constexpr,
                              HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    cm = c < C
    z = _preact(x_ptr, w_ptr, b_ptr, b * sxb, c, t, cm, L, sxc, sxl, K, HAS_BIAS, ACC)
    if SILU:
        z = z / (1.0 + tl.exp(-z))
    tl.store(y_ptr + b * C * L + c * L + t, z.to(y_ptr.dtype.element_ty), mask=cm & (t < L))


@triton.jit
def _causal_conv1d_bwd_dz_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dz_ptr, part_ptr, C, L, NLB,
                                 sxb, sxc, sxl, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                                 SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
                                 ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cvec = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = cvec[:, None]
    lb = tl.program_id(2)
    t = lb * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    cm = c < C
    inb = cm & (t < L)
    xb = b * sxb
    o = b * C * L + c * L + t
    dz = tl.load(dy_ptr + o, mask=inb, other=0.0).to(ACC)
    if SILU:
        z = _preact(x_ptr, w_ptr, b_ptr, xb, c, t, cm, L, sxc, sxl, K, HAS_BIAS, ACC)
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz = dz * sig * (1.0 + z * (1.0 - sig))
    tl.store(dz_ptr + o, dz, mask=inb)
    # partials [B, NLB, C, K+1]
    pbase = ((b * NLB + lb) * C + cvec) * (K + 1)
    pm = cvec < C
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        xv = tl.load(x_ptr + xb + c * sxc + s * sxl, mask=inb & (s >= 0), other=0.0).to(ACC)
        tl.store(part_ptr + pbase + j, tl.sum(dz * xv, axis=1), mask=pm)
    tl.store(part_ptr + pbase + K, tl.sum(dz, axis=1), mask=pm)


@triton.jit
def _causal_conv1d_bwd_dx_kernel(dz_ptr, w_ptr, dx_ptr, C, L, K: tl.constexpr,
                                 BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    cm = c < C
    row = b * C * L + c * L
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for j in tl.static_range(K):
        s = t + (K - 1) - j
        w = tl.load(w_ptr + c * K + j, mask=cm, other=0.0).to(ACC)
        acc += w * tl.load(dz_ptr + row + s, mask=cm & (s < L), other=0.0)
    tl.store(dx_ptr + row + t, acc.to(dx_ptr.dtype.element_ty), mask=cm & (t < L))


def _acc(x):
    # fp32 accumulation; fp64 inputs keep fp64
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(C: int, L: int, interpret: bool) -> tuple[int, int]:
    if interpret:  # few, large programs
        return min(64, triton.next_power_of_2(C)), max(16, min(1024, triton.next_power_of_2(L)))
    return min(16, triton.next_power_of_2(C)), max(16, min(128, triton.next_power_of_2(L)))


def _grid(B, C, L, BC, BL):
    return (B, triton.cdiv(C, BC), triton.cdiv(L, BL))


def causal_conv1d_fwd(x, weight, bias, activation):
    B, C, L = x.shape
    weight = weight.contiguous()
    y = torch.empty(B, C, L, dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        y.fill_(float("nan"))  # interpreter runs: poison
    BC, BL = _blocks(C, L, x.device.type == "cpu")
    _causal_conv1d_fwd_kernel[_grid(B, C, L, BC, BL)](
        x, weight, bias if bias is not None else weight, y, C, L, x.stride(0), x.stride(1),
        x.stride(2), K=weight.shape[1], HAS_BIAS=bias is not None, SILU=activation == "silu",
        BLOCK_C=BC, BLOCK_L=BL, ACC=_acc(x)[0])
    return y


def causal_conv1d_bwd(dy, x, weight, bias, activation):
    B, C, L = x.shape
    K = weight.shape[1]
    weight, dy = weight.contiguous(), dy.contiguous()
    BC, BL = _blocks(C, L, x.device.type == "cpu")
    nlb = triton.cdiv(L, BL)
    acc, tacc = _acc(x)
    dz = torch.empty(B, C, L, dtype=tacc, device=x.device)
    part = torch.empty(B, nlb, C, K + 1, dtype=tacc, device=x.device)
    dx = torch.empty(B, C, L, dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        for t in (dz, part, dx):
            t.fill_(float("nan"))
    grid = _grid(B, C, L, BC, BL)
    _causal_conv1d_bwd_dz_kernel[grid](
        x, weight, bias if bias is not None else weight, dy, dz, part, C, L, nlb,
        x.stride(0), x.stride(1), x.stride(2), K=K, HAS_BIAS=bias is not None,
        SILU=activation == "silu", BLOCK_C=BC, BLOCK_L=BL, ACC=acc)
    _causal_conv1d_bwd_dx_kernel[grid](dz, weight, dx, C, L, K=K, BLOCK_C=BC, BLOCK_L=BL, ACC=acc)
    sums = part.sum(dim=(0, 1))  # [C, K+1]
    dw = sums[:, :K].to(weight.dtype, copy=True)  # copies: outputs must not alias each other
    db = sums[:, K].to(bias.dtype, copy=True) if bias is not None else None
    return dx, dw, db


# custom ops: opaque to torch.compile, with fake-tensor shapes
@torch.library.custom_op("omicskern::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     silu: bool) -> torch.Tensor:
    """Triton causal_conv1d forward; x: [B, C, L], weight: [C, K], bias: [C] or None."""
    return causal_conv1d_fwd(x, weight, bias, "silu" if silu else None)


@causal_conv1d_op.register_fake
def _(x, weight, bias, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("omicskern::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, silu: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); dbias is empty without a bias."""
    dx, dw, db = causal_conv1d_bwd(dy, x, weight, bias, "silu" if silu else None)
    return dx, dw, db if db is not None else x.new_empty(0)


@causal_conv1d_bwd_op.register_fake
def _(dy, x, weight, bias, silu):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(bias) if bias is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = causal_conv1d_bwd_op(dy, x, weight, bias, ctx.silu)
    return dx, dw, db if ctx.has_bias else None, None


causal_conv1d_op.register_autograd(_backward, setup_context=_setup_context)
