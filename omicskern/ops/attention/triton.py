"""FlashAttention-2 style Triton kernels: forward and backward, packed variable-length batches,
bidirectional or causal, ALiBi, grouped-query heads, any head dim <= 256 (padded in registers).

Every kernel works on packed rows ``[T, H, D]`` with ``cu_seqlens`` and a grid over
``(blocks of max_seqlen, heads, sequences)``: a padded ``[B, L, H, D]`` batch is the special case of
equal lengths (a free view), so padding is never materialised. Scores are kept in the log2 domain
(``exp2`` is one instruction); all accumulation is float32; the forward saves the natural-log
``lse [H, T]`` that the backward uses to rebuild probabilities without a second softmax pass.

Backward: ``delta = rowsum(dO * O)`` (a small kernel), one kernel over key blocks accumulating dK
and dV, one over query blocks accumulating dQ (no atomics, deterministic); both mask only their
boundary blocks (the sequence end and the causal diagonal). With grouped-query heads dK/dV
are produced per query head and summed over each group.

The launchers are ``torch.library`` custom ops (``omicskern::attention_fwd``/``attention_bwd``)
with fake implementations, so ``torch.compile`` traces through them.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from omicskern.ops import backends
from omicskern.ops.packing import unpad_right_padded

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _attention_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, lo, hi,
                         qk_scale, slope, m0,
                         BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, ALIBI_FORM: tl.constexpr,
                         IEEE: tl.constexpr):
    """Online-softmax accumulation over key blocks [lo, hi). K, V point at this sequence's first
    row and this kv head. MASKED=False is the fast path for blocks known to be entirely valid
    (inside the sequence and, if causal, below the diagonal).

    ALiBi scores are shifted by the per-row constant c_i = slope (i - m0) (m0: the query block's
    first row), which cancels in the softmax and is taken off the lse at the end. In that frame
    a block entirely left of the query block (ALIBI_FORM 1: every key j < every query i) has
    bias -slope (i - j) + c_i = slope (j - m0), a column vector: one FFMA per score; a block
    entirely right of it (ALIBI_FORM 2) has slope (2 i - m0) - slope j, a row plus a column
    vector; only blocks crossing the diagonal (ALIBI_FORM 0) need |i - j|."""
    offs_n = tl.arange(0, BLOCK_N)
    if HAS_ALIBI:
        fi = offs_m.to(tl.float32)
        c_i = slope * (fi - m0)
        row2 = slope * (2.0 * fi - m0)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K + cols[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = V + cols[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            kv_mask = (cols < L)[:, None] & d_ok[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        elif EVEN_D:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        if HAS_ALIBI:
            # Positions as floats (exact below 2**24), no integer subtract/abs or quarter-rate
            # int->float conversion per score.
            fj = cols.to(tl.float32)
            if ALIBI_FORM == 1:
                s = s * qk_scale + (slope * (fj - m0))[None, :]
            elif ALIBI_FORM == 2:
                s = s * qk_scale + row2[:, None] - (slope * fj)[None, :]
            else:
                s = s * qk_scale - slope * tl.abs(fi[:, None] - fj[None, :]) + c_i[:, None]
            sc = 1.0
        else:
            sc = qk_scale  # folded into the exp2 argument: one FFMA per score, no separate multiply
        if MASKED:
            keep = (cols < L)[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
        # qk_scale > 0, so max(s) * sc = max(s * sc); m_i is kept in scaled (log2) units
        m_new = tl.maximum(m_i, tl.max(s, 1) * sc)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s * sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        elif EVEN_D:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(Q, K, V, O, LSE, CU, SLOPES,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_ot, stride_oh, stride_lh, qk_scale,
                          N_REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                          HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr):
    # Causal: the last query blocks carry the most work, so they are launched first.
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    seq_start = tl.load(CU + b).to(tl.int64)
    L = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
    if start_m * BLOCK_M >= L:
        return
    kvh = h // N_REP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < L
    Qb = Q + seq_start * stride_qt + h * stride_qh
    q = tl.load(Qb + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks [0, full_hi) need no mask: inside the sequence and, when causal, left of this
    # query block (BLOCK_M is a multiple of BLOCK_N). The rest, [full_hi, hi), is masked.
    hi = L
    full_hi = (L // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(L, (start_m + 1) * BLOCK_M)
        full_hi = tl.minimum(full_hi, start_m * BLOCK_M)
    # Every valid row sees key 0 in the first block visited, so m_i is finite from then on and
    # exp2 never computes (-inf) - (-inf) for a stored row.
    # Scalar (64-bit) base pointers per sequence and head, 32-bit offsets within the sequence:
    # per-element 64-bit addresses cost enough registers to spill on sm_90.
    Kb = K + seq_start * stride_kt + kvh * stride_kh
    Vb = V + seq_start * stride_vt + kvh * stride_vh
    m0 = start_m * BLOCK_M
    m0f = m0.to(tl.float32)
    ev = HEAD_DIM == BLOCK_D
    if HAS_ALIBI:
        # unmasked blocks split at the query block: left of it (column-vector ALiBi), crossing
        # it, right of it (row + column vectors); causal has only the first kind unmasked
        a = tl.minimum(m0, full_hi)
        c = tl.minimum(m0 + BLOCK_M, full_hi)
        acc, l_i, m_i = _attention_fwd_inner(
            acc, l_i, m_i, q, Kb, Vb, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, 0, a, qk_scale, slope,
            m0f, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=False, CAUSAL=CAUSAL, HAS_ALIBI=True, ALIBI_FORM=1, IEEE=IEEE)
        if not CAUSAL:
            acc, l_i, m_i = _attention_fwd_inner(
                acc, l_i, m_i, q, Kb, Vb, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, a, c, qk_scale, slope,
                m0f, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=False, CAUSAL=CAUSAL, HAS_ALIBI=True, ALIBI_FORM=0, IEEE=IEEE)
            acc, l_i, m_i = _attention_fwd_inner(
                acc, l_i, m_i, q, Kb, Vb, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, c, full_hi, qk_scale,
                slope, m0f, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=False, CAUSAL=CAUSAL, HAS_ALIBI=True,
                ALIBI_FORM=2, IEEE=IEEE)
    else:
        acc, l_i, m_i = _attention_fwd_inner(
            acc, l_i, m_i, q, Kb, Vb, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, 0, full_hi, qk_scale, slope,
            m0f, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=False, CAUSAL=CAUSAL, HAS_ALIBI=False, ALIBI_FORM=0, IEEE=IEEE)
    acc, l_i, m_i = _attention_fwd_inner(
        acc, l_i, m_i, q, Kb, Vb, stride_kt, stride_vt, offs_m, offs_d, d_ok, L, full_hi, hi, qk_scale, slope,
        m0f, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=True, CAUSAL=CAUSAL, HAS_ALIBI=HAS_ALIBI, ALIBI_FORM=0, IEEE=IEEE)
    out = acc / l_i[:, None]
    Ob = O + seq_start * stride_ot + h * stride_oh
    tl.store(Ob + offs_m[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse2 = m_i + tl.math.log2(l_i)
    if HAS_ALIBI:
        lse2 = lse2 - slope * (offs_m.to(tl.float32) - m0f)  # undo the per-row shift c_i
    lse = lse2 * 0.6931471805599453
    tl.store(LSE + h * stride_lh + seq_start + offs_m, lse, mask=m_ok)


@triton.jit
def _attention_bwd_delta_kernel(O, DO, DELTA, T, stride_ot, stride_oh, stride_dot, stride_doh, stride_lh,
                                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """delta[h, t] = sum_d dO[t, h, d] O[t, h, d] in fp32 (read once in the input dtype, no fp32
    copies of dO and O)."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    m = (offs_t < T)[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_t.to(tl.int64)[:, None]
    o = tl.load(O + rows * stride_ot + h * stride_oh + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    do = tl.load(DO + rows * stride_dot + h * stride_doh + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(DELTA + h * stride_lh + offs_t, tl.sum(o * do, 1), mask=offs_t < T)


@triton.jit
def _attention_bwd_dkdv_inner(dk, dv, k, v, Qb, DOb, LSEb, DELTAb, stride_qt, stride_dot, cols, offs_m,
                              offs_d, d_ok, L, lo, n_first, jump, n_blocks, qk_scale, slope,
                              BLOCK_M: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
                              CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr):
    """dK/dV accumulation of one key block over ``n_blocks`` query blocks: ``n_first`` from ``lo``
    on, the rest from ``jump`` on (the masked call visits the diagonal blocks and the tail block in
    one loop: a third loop copy cost 20-40 registers and spilled with Triton 3.6), on transposed tiles
    (S^T = K Q^T, [BLOCK_N, BLOCK_M]) so that P^T and dS^T come out of the dots in the layout the
    next dots consume (transposing register tiles costs shared-memory round trips and registers).

    MASKED=False is the interior: query blocks entirely inside the sequence and, if causal,
    entirely at or below the diagonal, so loads need no bounds and the score tile no mask. Key
    rows past the sequence end (k, v loaded as zeros by the caller) are not masked there either:
    row n of dK and dV depends only on row n of P^T and dS^T, and those rows are never stored."""
    for it in range(0, n_blocks):
        if MASKED:
            start_m = tl.where(it < n_first, lo + it * BLOCK_M, jump + (it - n_first) * BLOCK_M)
        else:
            start_m = lo + it * BLOCK_M
        qi = start_m + offs_m
        if MASKED:
            m_ok = qi < L
            qT = tl.load(Qb + qi[None, :] * stride_qt + offs_d[:, None],
                         mask=m_ok[None, :] & d_ok[:, None], other=0.0)
            do = tl.load(DOb + qi[:, None] * stride_dot + offs_d[None, :],
                         mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(LSEb + qi, mask=m_ok, other=0.0)
            delta = tl.load(DELTAb + qi, mask=m_ok, other=0.0)
        else:
            if EVEN_D:
                qT = tl.load(Qb + qi[None, :] * stride_qt + offs_d[:, None])
                do = tl.load(DOb + qi[:, None] * stride_dot + offs_d[None, :])
            else:
                qT = tl.load(Qb + qi[None, :] * stride_qt + offs_d[:, None], mask=d_ok[:, None], other=0.0)
                do = tl.load(DOb + qi[:, None] * stride_dot + offs_d[None, :], mask=d_ok[None, :], other=0.0)
            lse = tl.load(LSEb + qi)
            delta = tl.load(DELTAb + qi)
        lse = lse * 1.4426950408889634
        if IEEE:
            sT = tl.dot(k, qT, input_precision="ieee")
        else:
            sT = tl.dot(k, qT)
        if HAS_ALIBI:
            sT = sT * qk_scale - slope * tl.abs(cols.to(tl.float32)[:, None] - qi.to(tl.float32)[None, :])
            pT = tl.math.exp2(sT - lse[None, :])
        else:
            pT = tl.math.exp2(sT * qk_scale - lse[None, :])  # scale and lse in one FFMA
        if MASKED:
            keep = (cols < L)[:, None] & m_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[:, None] <= qi[None, :])
            pT = tl.where(keep, pT, 0.0)
        if IEEE:
            dv += tl.dot(pT.to(do.dtype), do, input_precision="ieee")
            dpT = tl.dot(v, tl.trans(do), input_precision="ieee")
        else:
            dv += tl.dot(pT.to(do.dtype), do)
            dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        if IEEE:
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision="ieee")
        else:
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
    return dk, dv


@triton.jit
def _attention_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, SLOPES,
                               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                               stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                               stride_lh, qk_scale, sm_scale,
                               N_REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                               HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr):
    start_n = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    seq_start = tl.load(CU + b).to(tl.int64)
    L = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
    if start_n * BLOCK_N >= L:
        return
    kvh = h // N_REP
    n0 = start_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = cols < L
    # Scalar 64-bit bases, 32-bit offsets within the sequence (see the forward kernel).
    Qb = Q + seq_start * stride_qt + h * stride_qh
    DOb = DO + seq_start * stride_dot + h * stride_doh
    LSEb = LSE + h * stride_lh + seq_start
    DELTAb = DELTA + h * stride_lh + seq_start
    k = tl.load(K + seq_start * stride_kt + kvh * stride_kh + cols[:, None] * stride_kt + offs_d[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + seq_start * stride_vt + kvh * stride_vh + cols[:, None] * stride_vt + offs_d[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query blocks (multiples of BLOCK_M): causal ones from the block holding key n0; those from
    # diag_end on have every row i >= n0 + BLOCK_N - 1 >= every key j of this block (no causal
    # mask); those below full_end lie inside the sequence. [diag_end, full_end) is the unmasked
    # interior; the diagonal blocks [lo, diag_end) and the partial tail block [tail, L) are masked
    # (one loop: the diagonal ones first, then a jump to the tail).
    lo = 0
    diag_end = 0
    if CAUSAL:
        lo = (n0 // BLOCK_M) * BLOCK_M
        diag_end = ((n0 + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_end = (L // BLOCK_M) * BLOCK_M
    n_diag = (tl.minimum(diag_end, L) - lo + BLOCK_M - 1) // BLOCK_M  # 0 unless causal
    tail = tl.maximum(diag_end, full_end)
    n_tail = (tl.maximum(L - tail, 0) + BLOCK_M - 1) // BLOCK_M  # 0 or 1
    ev = HEAD_DIM == BLOCK_D
    dk, dv = _attention_bwd_dkdv_inner(
        dk, dv, k, v, Qb, DOb, LSEb, DELTAb, stride_qt, stride_dot, cols, offs_m, offs_d, d_ok, L,
        diag_end, 0, 0, tl.maximum(full_end - diag_end, 0) // BLOCK_M, qk_scale, slope, BLOCK_M=BLOCK_M,
        EVEN_D=ev, MASKED=False, CAUSAL=CAUSAL, HAS_ALIBI=HAS_ALIBI, IEEE=IEEE)
    dk, dv = _attention_bwd_dkdv_inner(
        dk, dv, k, v, Qb, DOb, LSEb, DELTAb, stride_qt, stride_dot, cols, offs_m, offs_d, d_ok, L,
        lo, n_diag, tail, n_diag + n_tail, qk_scale, slope, BLOCK_M=BLOCK_M, EVEN_D=ev, MASKED=True,
        CAUSAL=CAUSAL, HAS_ALIBI=HAS_ALIBI, IEEE=IEEE)
    dk = dk * sm_scale
    tl.store(DK + seq_start * stride_dkt + h * stride_dkh + cols[:, None] * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + seq_start * stride_dvt + h * stride_dvh + cols[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


@triton.jit
def _attention_bwd_dq_inner(dq, q, do, lse, delta, Kb, Vb, stride_kt, stride_vt, qi, offs_n, offs_d, d_ok,
                            L, lo, hi, qk_scale, slope,
                            BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
                            CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr):
    """dQ accumulation of one query block over the key blocks [lo, hi). MASKED=False: key blocks
    entirely inside the sequence and, if causal, entirely left of the query block. Keys past the
    end must be masked (a zero key scores 0, and exp2(0 - lse) can overflow to inf, whose product
    with the zero key row is NaN in a stored row); query rows past the end need no mask (their
    q, dO, lse and delta load as zeros and their dQ rows are not stored)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            n_ok = cols < L
            k = tl.load(Kb + cols[:, None] * stride_kt + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(Vb + cols[:, None] * stride_vt + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        elif EVEN_D:
            k = tl.load(Kb + cols[:, None] * stride_kt + offs_d[None, :])
            v = tl.load(Vb + cols[:, None] * stride_vt + offs_d[None, :])
        else:
            k = tl.load(Kb + cols[:, None] * stride_kt + offs_d[None, :], mask=d_ok[None, :], other=0.0)
            v = tl.load(Vb + cols[:, None] * stride_vt + offs_d[None, :], mask=d_ok[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        if HAS_ALIBI:
            s = s * qk_scale - slope * tl.abs(qi.to(tl.float32)[:, None] - cols.to(tl.float32)[None, :])
            p = tl.math.exp2(s - lse[:, None])
        else:
            p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASKED:
            keep = n_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= qi[:, None])
            p = tl.where(keep, p, 0.0)
        if IEEE:
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        else:
            dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        if IEEE:
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _attention_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU, SLOPES,
                             stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                             stride_dot, stride_doh, stride_dqt, stride_dqh,
                             stride_lh, qk_scale, sm_scale,
                             N_REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                             HAS_ALIBI: tl.constexpr, IEEE: tl.constexpr):
    start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    seq_start = tl.load(CU + b).to(tl.int64)
    L = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
    if start_m * BLOCK_M >= L:
        return
    kvh = h // N_REP
    m0 = start_m * BLOCK_M
    qi = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = qi < L
    # Scalar 64-bit bases, 32-bit offsets within the sequence (see the forward kernel).
    q = tl.load(Q + seq_start * stride_qt + h * stride_qh + qi[:, None] * stride_qt + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + seq_start * stride_dot + h * stride_doh + qi[:, None] * stride_dot + offs_d[None, :],
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + h * stride_lh + seq_start + qi, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + h * stride_lh + seq_start + qi, mask=m_ok, other=0.0)
    Kb = K + seq_start * stride_kt + kvh * stride_kh
    Vb = V + seq_start * stride_vt + kvh * stride_vh
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks [0, full_hi): inside the sequence and, causal, left of this query block (BLOCK_M
    # is a multiple of BLOCK_N, so m0 is a key-block start); [full_hi, hi) is masked.
    hi = L
    full_hi = (L // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(L, m0 + BLOCK_M)
        full_hi = tl.minimum(full_hi, m0)
    ev = HEAD_DIM == BLOCK_D
    dq = _attention_bwd_dq_inner(dq, q, do, lse, delta, Kb, Vb, stride_kt, stride_vt, qi, offs_n, offs_d, d_ok,
                                 L, 0, full_hi, qk_scale, slope, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=False,
                                 CAUSAL=CAUSAL, HAS_ALIBI=HAS_ALIBI, IEEE=IEEE)
    dq = _attention_bwd_dq_inner(dq, q, do, lse, delta, Kb, Vb, stride_kt, stride_vt, qi, offs_n, offs_d, d_ok,
                                 L, full_hi, hi, qk_scale, slope, BLOCK_N=BLOCK_N, EVEN_D=ev, MASKED=True,
                                 CAUSAL=CAUSAL, HAS_ALIBI=HAS_ALIBI, IEEE=IEEE)
    dq = dq * sm_scale
    tl.store(DQ + seq_start * stride_dqt + h * stride_dqh + qi[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Launch configuration. No autotuning: the interpreter cannot run it, and a fixed table keeps the
# first call cheap. Interpreter blocks are large because its cost is per block-iteration. The GPU
# entries were chosen without a GPU: each compiles for sm_90 (bf16/fp16) without register spills
# (checked with cuobjdump --dump-resource-usage on Triton's cubin; sm_80 has its own entries where
# the sm_90 ones spill); they are not tuned for speed.


def poison_outputs() -> bool:
    """NaN-fill outputs before the kernels run, so an unwritten element fails the tests: in the
    interpreter (tests) or with ``OMICSKERN_DEBUG_POISON=1`` only (on GPU it is a full extra write)."""
    return os.environ.get("OMICSKERN_DEBUG_POISON", "") == "1" or backends.triton_interpret()


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _fp32_config(kind: str, D: int) -> dict:
    """fp32 (IEEE, FMA-unit dots) tiles: 8 warps (4 for forward / dQ at head dims <= 32), and
    16 x 16 where D's class needs it; every entry compiles for sm_90 without spills with Triton 3.9
    and 3.6 (on 4 warps the old 32 x 32 tiles spilled 16 B-15 KB from D = 64 on, docs/attention.md)."""
    bd = _block_d(D)
    mid = 16 < bd <= 64  # 32 x 32 forward / dQ; at D class 16 it spills 8 B with Triton 3.6
    m, n = {"fwd": (32, 32) if mid else (16, 16),
            "dkdv": (16, 32) if bd <= 128 else (16, 16),
            "dq": (32, 32) if mid else (16, 16)}[kind]
    # forward / dQ at head dims <= 32 on 8 warps: ptxas picks 64 registers and spills 8-16 B
    warps = 4 if kind != "dkdv" and bd <= 32 else 8
    return dict(BLOCK_M=m, BLOCK_N=n, num_warps=warps, num_stages=1)


def _fwd_config(D: int, interpret: bool, sm: int = 90, fp32: bool = False, alibi: bool = False,
                causal: bool = False) -> dict:
    if interpret:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)
    if fp32:  # IEEE fp32 dots run on FMA units, not tensor cores: small tiles (a correctness path)
        return _fp32_config("fwd", D)
    if _block_d(D) <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    if _block_d(D) <= 128:
        if sm >= 90:
            # Hopper sweep (docs/attention.md): 128x128 on 8 warps with 2 stages (160 KiB shared,
            # 255 registers, no spills) halves the K/V passes per query block; with ALiBi it spills
            # (48 B), so ALiBi uses 128x64 with 2 stages (3 stages spill 24 B bidirectional)
            if alibi:
                return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
            if causal:  # causal 128x128 spills 40 B with Triton 3.6 (the device image's); 128x64 doesn't
                return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
            return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2)
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)  # D > 128: spills a little


def _bwd_config(D: int, interpret: bool, sm: int = 90, fp32: bool = False) -> tuple[dict, dict]:
    """(dK/dV kernel config, dQ kernel config)."""
    if interpret:
        c = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)
        return c, c
    if fp32:
        return _fp32_config("dkdv", D), _fp32_config("dq", D)
    if _block_d(D) <= 64:
        # sm_90: 128 keys per program on 8 warps (m128 x n64 products, half the Q / dO passes of
        # 64 keys; 210-252 registers with Triton 3.9 / 3.6, no spills); 128 queries per step spill
        kv = dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2) if sm >= 90 else \
            dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2)
        return kv, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    if _block_d(D) <= 128:
        kv = dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2) if sm >= 90 else \
            dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)
        if sm >= 90:  # dQ at 128x64 on 8 warps: 226-254 registers, no spills
            return kv, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
        return kv, dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3)
    # D > 128: dK/dV with 32 keys per program (mma.sync: wgmma needs 64 rows, and 64 keys spill
    # 264-632 B); dQ at 64 x 32 with 2 stages is a wgmma tile that fits (219-255 registers)
    return (dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1),
            dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2) if sm >= 90 else
            dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1))


# Autotuning (CUDA only; the interpreter keeps the fixed table above): per (kernel, head-dim class,
# ALiBi) the table's entry first, then these alternatives; triton.autotune benchmarks them on the
# first call for each (HEAD_DIM, N_REP, CAUSAL) and caches the choice for the process. Every
# candidate is in sm90_launches, so the sm_90 compile check covers it (all compile spill-free).
# dK/dV at D = 128 has no alternatives: every wider tile spills on sm_90 (docs/attention.md).
_C = lambda m, n, w, st: dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)  # noqa: E731
_ALTERNATIVES = {
    ("fwd", 64, False): [_C(128, 128, 8, 2), _C(64, 64, 4, 3)],
    ("fwd", 64, True): [_C(128, 64, 8, 2), _C(64, 64, 4, 3)],
    ("fwd", 128, False): [_C(128, 64, 8, 3), _C(128, 64, 8, 2)],
    ("fwd", 128, True): [],  # 128x64 with 3 stages and 64x64 on 4 warps spill
    ("dkdv", 64, False): [_C(64, 64, 4, 2)], ("dkdv", 64, True): [_C(64, 64, 4, 2)],
    ("dq", 64, False): [_C(64, 64, 4, 2)], ("dq", 64, True): [_C(64, 64, 4, 2)],
    ("dq", 128, False): [_C(64, 32, 4, 3)], ("dq", 128, True): [_C(64, 32, 4, 3)],
}
_TUNERS: dict = {}


def autotune_enabled(device: torch.device) -> bool:
    """Autotune on CUDA unless ``OMICSKERN_ATTENTION_AUTOTUNE=0`` (never in the interpreter)."""
    return (device.type == "cuda" and not backends.triton_interpret()
            and os.environ.get("OMICSKERN_ATTENTION_AUTOTUNE", "1") != "0")


def _candidates(kind: str, D: int, sm: int, fp32: bool, alibi: bool, causal: bool = False) -> list[dict]:
    """Launch configs the autotuner may choose for kernel ``kind`` ("fwd", "dkdv", "dq"); the
    fixed table's entry first (the only one for fp32, sm < 90 and head-dim classes 16/32/256)."""
    kv, dq = _bwd_config(D, False, sm, fp32)
    table = {"fwd": _fwd_config(D, False, sm, fp32, alibi, causal), "dkdv": kv, "dq": dq}[kind]
    if fp32 or sm < 90:
        return [table]
    alt = _ALTERNATIVES.get((kind, _block_d(D), alibi), [])
    out = [table] + [c for c in alt if c != table]
    assert kind == "dkdv" or all(c["BLOCK_M"] % c["BLOCK_N"] == 0 for c in out)  # masked/unmasked splits
    return out


def _tuned(kind, fn, D, sm, fp32, alibi, causal=False):
    key = (kind, _block_d(D), sm, fp32, alibi, causal)
    if key not in _TUNERS:
        configs = [triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]},
                                 num_warps=c["num_warps"], num_stages=c["num_stages"])
                   for c in _candidates(kind, D, sm, fp32, alibi, causal)]
        _TUNERS[key] = triton.autotune(configs=configs, key=["HEAD_DIM", "N_REP", "CAUSAL"])(fn)
    return _TUNERS[key]


def _launch(kind, fn, device, D, fp32, alibi, cfg, grid_of, args, consts):
    """Launch ``fn`` with the fixed config ``cfg`` or, on CUDA, through its autotuner;
    ``grid_of(BLOCK_M, BLOCK_N)`` gives the grid."""
    if autotune_enabled(device):
        _tuned(kind, fn, D, _sm(device), fp32, alibi, consts["CAUSAL"])[
            lambda meta: grid_of(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **consts)
    else:
        fn[grid_of(cfg["BLOCK_M"], cfg["BLOCK_N"])](*args, **consts, **cfg)


def _sm(device: torch.device) -> int:
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else like.new_empty(1, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Custom ops over packed rows [T, H, D] (all layouts reduce to this).


@torch.library.custom_op("omicskern::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                  alibi_slopes: torch.Tensor | None, max_seqlen: int, causal: bool,
                  softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward over packed rows. q: [T, H, D], k/v: [T, Hk, D], cu_seqlens: int32 [N+1].
    Returns (out [T, H, D], lse float32 [H, T], natural log)."""
    T, H, D = q.shape
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((H, T), device=q.device, dtype=torch.float32)
    if poison_outputs():
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
    N = cu_seqlens.numel() - 1
    if T == 0 or N == 0 or max_seqlen == 0:
        return out, lse
    cfg = _fwd_config(D, backends.triton_interpret(), _sm(q.device), q.dtype == torch.float32,
                      alibi=alibi_slopes is not None, causal=causal)
    assert cfg["BLOCK_M"] % cfg["BLOCK_N"] == 0  # the forward's unmasked/masked split relies on it
    if max_seqlen * max(q.stride(0), k.stride(0), v.stride(0), out.stride(0)) >= 2**31:
        raise ValueError(f"attention(backend='triton'): a sequence of {max_seqlen} rows with row stride "
                         f"{max(q.stride(0), k.stride(0), v.stride(0))} overflows the kernels' 32-bit "
                         "in-sequence offsets; use backend='sdpa' or shorter sequences")
    _launch("fwd", _attention_fwd_kernel, q.device, D, q.dtype == torch.float32, alibi_slopes is not None,
            cfg, lambda bm, bn: (triton.cdiv(max_seqlen, bm), H, N),
            (q, k, v, out, lse, cu_seqlens, _dummy(alibi_slopes, q),
             q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
             out.stride(0), out.stride(1), lse.stride(0), softmax_scale * LOG2E),
            dict(N_REP=H // k.shape[1], HEAD_DIM=D, BLOCK_D=_block_d(D), CAUSAL=causal,
                 HAS_ALIBI=alibi_slopes is not None, IEEE=q.dtype == torch.float32))
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, cu_seqlens, alibi_slopes, max_seqlen, causal, softmax_scale):
    T, H, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((H, T), dtype=torch.float32)


@torch.library.custom_op("omicskern::attention_bwd", mutates_args=())
def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor,
                  alibi_slopes: torch.Tensor | None, max_seqlen: int, causal: bool,
                  softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward over packed rows; returns (dq, dk, dv) shaped like (q, k, v)."""
    T, H, D = q.shape
    Hk = k.shape[1]
    q, k, v, do = (_last_dim_contiguous(t) for t in (q, k, v, do))
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    # Grouped heads: per-query-head dK/dV in float32, summed over each group below.
    gdt = q.dtype if Hk == H else torch.float32
    dk_h = torch.empty((T, H, D), device=q.device, dtype=gdt)
    dv_h = torch.empty((T, H, D), device=q.device, dtype=gdt)
    if poison_outputs():
        for t in (dq, dk_h, dv_h):
            t.fill_(float("nan"))
    N = cu_seqlens.numel() - 1
    if T == 0 or N == 0 or max_seqlen == 0:
        return dq, dk_h.view(T, Hk, H // Hk, D).sum(2).to(q.dtype), dv_h.view(T, Hk, H // Hk, D).sum(2).to(q.dtype)
    delta = torch.empty(H, T, device=q.device, dtype=torch.float32)
    out = _last_dim_contiguous(out)
    _attention_bwd_delta_kernel[(triton.cdiv(T, 64), H)](
        out, do, delta, T, out.stride(0), out.stride(1), do.stride(0), do.stride(1), delta.stride(0),
        HEAD_DIM=D, BLOCK_D=_block_d(D), BLOCK_T=64, num_warps=4)
    lse = lse.contiguous()
    cfg_kv, cfg_q = _bwd_config(D, backends.triton_interpret(), _sm(q.device), q.dtype == torch.float32)
    assert cfg_q["BLOCK_M"] % cfg_q["BLOCK_N"] == 0  # the dQ kernel's unmasked/masked split relies on it
    common = dict(N_REP=H // Hk, HEAD_DIM=D, BLOCK_D=_block_d(D), CAUSAL=causal,
                  HAS_ALIBI=alibi_slopes is not None, IEEE=q.dtype == torch.float32)
    slopes = _dummy(alibi_slopes, q)
    fp32, alibi = q.dtype == torch.float32, alibi_slopes is not None
    _launch("dkdv", _attention_bwd_dkdv_kernel, q.device, D, fp32, alibi, cfg_kv,
            lambda bm, bn: (triton.cdiv(max_seqlen, bn), H, N),
            (q, k, v, do, lse, delta, dk_h, dv_h, cu_seqlens, slopes,
             q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
             do.stride(0), do.stride(1), dk_h.stride(0), dk_h.stride(1), dv_h.stride(0), dv_h.stride(1),
             lse.stride(0), softmax_scale * LOG2E, softmax_scale), common)
    _launch("dq", _attention_bwd_dq_kernel, q.device, D, fp32, alibi, cfg_q,
            lambda bm, bn: (triton.cdiv(max_seqlen, bm), H, N),
            (q, k, v, do, lse, delta, dq, cu_seqlens, slopes,
             q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
             do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
             lse.stride(0), softmax_scale * LOG2E, softmax_scale), common)
    if Hk == H:
        return dq, dk_h, dv_h
    return (dq, dk_h.view(T, Hk, H // Hk, D).sum(2).to(q.dtype),
            dv_h.view(T, Hk, H // Hk, D).sum(2).to(q.dtype))


@attention_bwd.register_fake
def _(do, q, k, v, out, lse, cu_seqlens, alibi_slopes, max_seqlen, causal, softmax_scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, alibi_slopes, max_seqlen, causal, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, alibi_slopes)
    ctx.max_seqlen, ctx.causal, ctx.softmax_scale = max_seqlen, causal, softmax_scale


def _fwd_backward(ctx, dout, dlse):
    # lse is an auxiliary output for the backward; it is never differentiated (dlse is ignored).
    q, k, v, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = attention_bwd(dout, q, k, v, out, lse, cu_seqlens, alibi_slopes, ctx.max_seqlen,
                               ctx.causal, ctx.softmax_scale)
    return dq, dk, dv, None, None, None, None, None


attention_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------------------------------------


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     alibi_slopes: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                     max_seqlen: int | None = None, key_padding_mask: torch.Tensor | None = None,
                     softmax_scale: float | None = None) -> torch.Tensor:
    """Attention through the Triton kernels, any layout of :func:`omicskern.ops.attention.attention`
    (arguments already validated). Differentiable in q, k, v."""
    D = q.shape[-1]
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    slopes = None if alibi_slopes is None else alibi_slopes.to(device=q.device, dtype=torch.float32).contiguous()
    if cu_seqlens is not None:
        if max_seqlen is None:
            lens = cu_seqlens[1:] - cu_seqlens[:-1]
            max_seqlen = int(lens.max().item()) if lens.numel() else 0
        out, _ = attention_fwd(q, k, v, cu_seqlens.contiguous(), slopes, int(max_seqlen), causal, scale)
        return out
    B, L, H, _ = q.shape
    Hk = k.shape[2]
    if key_padding_mask is None:
        # Equal lengths: the padded batch is already packed rows (a view when [B, L] is contiguous).
        cu = torch.arange(0, (B + 1) * L, L, device=q.device, dtype=torch.int32) if L > 0 else \
            torch.zeros(B + 1, device=q.device, dtype=torch.int32)
        out, _ = attention_fwd(q.reshape(B * L, H, D), k.reshape(B * L, Hk, D), v.reshape(B * L, Hk, D),
                               cu, slopes, L, causal, scale)
        return out.view(B, L, H, D)
    idx, cu, max_len = unpad_right_padded(key_padding_mask, "triton")
    out_p, _ = attention_fwd(q.reshape(B * L, H, D)[idx], k.reshape(B * L, Hk, D)[idx],
                             v.reshape(B * L, Hk, D)[idx], cu, slopes, max_len, causal, scale)
    out = out_p.new_zeros(B * L, H, D).index_copy(0, idx, out_p)
    return out.view(B, L, H, D)


# ---------------------------------------------------------------------------------------------
# Every configuration the dispatch above can launch on sm_90, for the compile check
# (benchmarks/sm90_compile_check.py, tests/ops/test_sm90_compile.py).

_HEAD_DIMS = {16: (16, 8), 32: (32, 24), 64: (64, 40), 128: (128, 80), 256: (256, 200)}
_TRI = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def sm90_launches(full: bool = True) -> list[dict]:
    """Launch descriptions (kernel, argument types, constexprs, warps, stages, expected MMA) of
    every (head dim class, padded head dim, dtype, causal, ALiBi) the sm_90 dispatch can choose;
    ``full=False``: bf16 D=128 (causal + ALiBi, the largest tiles), bf16 D=64 and fp32 D=64."""
    out = []
    for bd, dims in _HEAD_DIMS.items():
        for D in dims:
            for dt, tn in _TRI.items():
                for causal in (False, True):
                    for alibi in (False, True):
                        rep = (D == bd and causal and alibi and dt == torch.bfloat16 and bd in (64, 128)) \
                            or (dt == torch.float32 and D == 64 and causal and alibi)
                        if not full and not rep:
                            continue
                        out += _launches_for(D, dt, tn, causal, alibi)
            for dt, tn in _TRI.items():
                if full or (D == 128 and dt == torch.bfloat16):
                    out.append(dict(kernel="bwd_delta", fn=_attention_bwd_delta_kernel,
                                    types=dict(O=f"*{tn}", DO=f"*{tn}", DELTA="*fp32"),
                                    constexprs=dict(HEAD_DIM=D, BLOCK_D=bd, BLOCK_T=64), num_warps=4,
                                    num_stages=3, mma=None, tags=f"D{D} {tn}",
                                    div16=["stride_ot", "stride_oh", "stride_dot", "stride_doh"]))
    return out


def _launches_for(D, dt, tn, causal, alibi):
    fp32 = dt == torch.float32
    types = {n: f"*{tn}" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    types.update({n: "*fp32" for n in ("LSE", "SLOPES", "DELTA")}, CU="*i32", qk_scale="fp32",
                 sm_scale="fp32")
    tags = f"D{D} {tn}{' causal' if causal else ''}{' alibi' if alibi else ''}"
    out = []
    cands = [(name, fn, cfg) for name, kind, fn in (("fwd", "fwd", _attention_fwd_kernel),
                                                     ("bwd_dkdv", "dkdv", _attention_bwd_dkdv_kernel),
                                                     ("bwd_dq", "dq", _attention_bwd_dq_kernel))
             for cfg in _candidates(kind, D, 90, fp32, alibi, causal)]
    for name, fn, cfg in cands:
        cons = dict(N_REP=1, HEAD_DIM=D, BLOCK_D=_block_d(D), BLOCK_M=cfg["BLOCK_M"],
                    BLOCK_N=cfg["BLOCK_N"], CAUSAL=causal, HAS_ALIBI=alibi, IEEE=fp32)
        # wgmma needs an M dimension of 64 (the query rows; the keys in dK/dV's transposed tiles)
        rows = cfg["BLOCK_N"] if name == "bwd_dkdv" else cfg["BLOCK_M"]
        out.append(dict(kernel=name, fn=fn, types=types, constexprs=cons, num_warps=cfg["num_warps"],
                        num_stages=cfg["num_stages"], mma=None if fp32 else "wgmma" if rows >= 64 else "mma",
                        tags=f"{tags} {cfg['BLOCK_M']}x{cfg['BLOCK_N']}",
                        div16=[n for n in fn.arg_names if n.startswith("stride_")]))
    return out
