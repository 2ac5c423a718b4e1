"""Triton kernels for ``causal_conv1d`` (depthwise, K <= 8 taps, optional fused SiLU).

Forward: one program per (row = b*C + c, block of BLOCK_L positions); the K taps are unrolled,
the pre-activation accumulates in fp32 (fp64 for fp64 inputs). Backward in two kernels: the first recomputes the
pre-activation, forms dz = dy * act'(z), writes it (fp32) and per-block partial sums for dweight
and dbias (reduced over blocks and batch in torch, deterministic); the second computes
dx[t] = sum_j w[j] dz[t + K-1-j] from dz.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 8


def unsupported_reason(K: int) -> str | None:
    return None if 1 <= K <= MAX_K else f"the Triton causal_conv1d supports K <= {MAX_K}"


@triton.jit
def _preact(x_ptr, w_ptr, b_ptr, base, c, t, L, K: tl.constexpr, HAS_BIAS: tl.constexpr,
            ACC: tl.constexpr):
    acc = tl.zeros(t.shape, dtype=ACC)
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        xv = tl.load(x_ptr + base + s, mask=(s >= 0) & (s < L), other=0.0).to(ACC)
        acc += tl.load(w_ptr + c * K + j).to(ACC) * xv
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(ACC)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, L, K: tl.constexpr,
                              HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_L: tl.constexpr,
                              ACC: tl.constexpr):
    row = tl.program_id(0)
    c = row % C
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    base = row.to(tl.int64) * L
    z = _preact(x_ptr, w_ptr, b_ptr, base, c, t, L, K, HAS_BIAS, ACC)
    if SILU:
        z = z / (1.0 + tl.exp(-z))
    tl.store(y_ptr + base + t, z.to(y_ptr.dtype.element_ty), mask=t < L)


@triton.jit
def _causal_conv1d_bwd_dz_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dz_ptr, part_ptr, C, L, NBLK,
                                 K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                                 BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    c = row % C
    t = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    inb = t < L
    base = row.to(tl.int64) * L
    dz = tl.load(dy_ptr + base + t, mask=inb, other=0.0).to(ACC)
    if SILU:
        z = _preact(x_ptr, w_ptr, b_ptr, base, c, t, L, K, HAS_BIAS, ACC)
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz = dz * sig * (1.0 + z * (1.0 - sig))
    tl.store(dz_ptr + base + t, dz, mask=inb)
    pbase = (row.to(tl.int64) * NBLK + blk) * (K + 1)
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        xv = tl.load(x_ptr + base + s, mask=(s >= 0) & inb, other=0.0).to(ACC)
        tl.store(part_ptr + pbase + j, tl.sum(dz * xv, axis=0))
    tl.store(part_ptr + pbase + K, tl.sum(dz, axis=0))


@triton.jit
def _causal_conv1d_bwd_dx_kernel(dz_ptr, w_ptr, dx_ptr, C, L, K: tl.constexpr,
                                 BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    c = row % C
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    base = row.to(tl.int64) * L
    acc = tl.zeros([BLOCK_L], dtype=ACC)
    for j in tl.static_range(K):
        s = t + (K - 1) - j
        acc += tl.load(w_ptr + c * K + j).to(ACC) * tl.load(dz_ptr + base + s, mask=s < L, other=0.0)
    tl.store(dx_ptr + base + t, acc.to(dx_ptr.dtype.element_ty), mask=t < L)


def _acc(x):
    # fp32 accumulation; fp64 inputs keep fp64
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def _block(L: int) -> int:
    return max(16, min(1024, triton.next_power_of_2(L)))


def causal_conv1d_fwd(x, weight, bias, activation):
    B, C, L = x.shape
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    if x.device.type == "cpu":
        y.fill_(float("nan"))  # interpreter runs: poison
    BL = _block(L)
    _causal_conv1d_fwd_kernel[(B * C, triton.cdiv(L, BL))](
        x, weight, bias if bias is not None else weight, y, C, L, K=weight.shape[1],
        HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_L=BL, ACC=_acc(x)[0])
    return y


def causal_conv1d_bwd(dy, x, weight, bias, activation):
    B, C, L = x.shape
    K = weight.shape[1]
    x, weight, dy = x.contiguous(), weight.contiguous(), dy.contiguous()
    BL = _block(L)
    nblk = triton.cdiv(L, BL)
    acc, tacc = _acc(x)
    dz = torch.empty(B, C, L, dtype=tacc, device=x.device)
    part = torch.empty(B, C, nblk, K + 1, dtype=tacc, device=x.device)
    dx = torch.empty_like(x)
    if x.device.type == "cpu":
        for t in (dz, part, dx):
            t.fill_(float("nan"))
    _causal_conv1d_bwd_dz_kernel[(B * C, nblk)](
        x, weight, bias if bias is not None else weight, dy, dz, part, C, L, nblk, K=K,
        HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_L=BL, ACC=acc)
    _causal_conv1d_bwd_dx_kernel[(B * C, nblk)](dz, weight, dx, C, L, K=K, BLOCK_L=BL, ACC=acc)
    sums = part.sum(dim=(0, 2))  # [C, K+1]
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
