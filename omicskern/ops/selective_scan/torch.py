"""The ``torch`` backend of ``selective_scan``: an exact chunked scan with no Python loop over L.

Layout. Channels are split as ``D = G * H`` (G = the B/C groups); L is padded to a multiple of the
chunk length T with ``delta = 0`` (decay 1, input 0: the state passes through unchanged, so the
last state is the one at the real end) and cut into *blocks* of ``M`` chunks, one block processed
at a time so memory stays ``O(B D N T M)`` whatever L is. Inside a block every tensor is
``[T, B, G, H, M, N]``: the position inside the chunk outermost, so that a time step of all M
chunks is one contiguous slice.

Per block (``a_t = exp(delta_t A) in (0, 1]`` since A < 0, ``b_t = delta_t B_t u_t``):

1. local scan, vectorised over the M chunks: ``h_t = a_t h_{t-1} + b_t`` from a zero start, a
   loop over the T positions of a chunk (T ~ sqrt(block)), the same multiply-adds as the
   sequential definition, grouped differently;
2. ``P_t = prod_{s<=t} a_s`` within each chunk (``cumprod``; products of numbers in (0, 1] only
   shrink: no overflow, and an underflow to 0 is the true value rounded). Decays and products
   below ``exp(-80)`` (fp32; ``exp(-700)`` fp64) are set to 0 rather than left subnormal: they
   scale a state by less than 1.8e-35, far below fp32 resolution, and subnormal operands slow
   x86 multiplies ~100x;
3. the carry: chunk m starts from ``S_m = P_{T-1}^{(m-1)} S_{m-1} + h_{T-1}^{(m-1)}`` (a loop over
   the M chunks on ``[B, D, N]`` states; the first chunk starts from the previous block's end);
4. ``h_t += P_t S_m``, then ``y_t = <h_t, C_t>``.

Every state is a sum of the same non-negative-decay terms as the sequential recurrence, so the
rounding is that of the sequential scan (relative ~ (T + M) eps, in fp32 for fp16/bf16/fp32
inputs, fp64 for fp64). No ``exp(-cumsum)`` factorisation is used: it overflows once
``sum delta A < -88`` within a chunk (fp32), which real Mamba layers reach.

Backward (:class:`SelectiveScanFn`) stores only the block-start states; it recomputes each
block's states from them and runs the adjoint recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}``
with the same chunked scheme, backwards, blocks in reverse order. The D skip, z gate, delta bias
and softplus are plain differentiable torch ops around it (in :mod:`.interface`).
"""

from __future__ import annotations

import math

import torch

# elements of one [T, B, G, H, M, N] block tensor: ~16 MB in fp32; a block holds ~5 of them
_BLOCK_ELEMS = 1 << 22
# decays below exp(-80) (fp32; exp(-700) fp64) are set to 0: they are far below the dtype's
# resolution of any state they multiply (e^-80 = 1.8e-35), and subnormal operands make x86
# multiplies ~100x slower
_LOG_TINY = {torch.float32: -80.0, torch.float64: -700.0}


def _decays(dl, A):
    """a = exp(delta A), flushed to 0 below exp(_LOG_TINY)."""
    dA = dl[..., None] * A[None, None, :, :, None, :]
    a = torch.exp(dA)
    return a.masked_fill_(dA < _LOG_TINY[a.dtype], 0.0)


def _flush(P):
    return P.masked_fill_(P < math.exp(_LOG_TINY[P.dtype]), 0.0)


def plan(batch: int, dim: int, nstate: int, L: int, block_elems: int = _BLOCK_ELEMS) -> tuple[int, int]:
    """(T, M): chunk length and chunks per block, for a [batch, dim, L] scan with N = nstate."""
    per_pos = max(1, batch * dim * nstate)
    S = max(16, min(block_elems // per_pos, L))  # positions per block
    T = max(4, min(64, int(math.sqrt(S))))
    M = max(1, -(-min(S, L) // T))
    return T, M


def _to_blocks(x: torch.Tensor, T: int, M: int, m0: int, Mb: int) -> torch.Tensor:
    """[B, G, H, Lp] -> the block starting at chunk m0 with Mb chunks, as [T, B, G, H, Mb]."""
    Bb, G, H, _ = x.shape
    s = x[..., m0 * T:(m0 + Mb) * T]
    return s.reshape(Bb, G, H, Mb, T).permute(4, 0, 1, 2, 3).contiguous()


def _bc_block(X: torch.Tensor, var: bool, T: int, m0: int, Mb: int) -> torch.Tensor:
    """B or C for one block, broadcastable to [T, B, G, H, Mb, N]: variable X is [B, G, Lp, N]."""
    if not var:
        return X[None, None, :, :, None, :]  # [G, H, N] -> [1, 1, G, H, 1, N]
    Bb, G, _, N = X.shape
    s = X[:, :, m0 * T:(m0 + Mb) * T]
    return s.reshape(Bb, G, Mb, T, N).permute(3, 0, 1, 2, 4).contiguous()[:, :, :, None]  # [T, B, G, 1, Mb, N]


def _block_forward(dl, ul, A, Bx, Cx, h0):
    """One block, no autograd. dl, ul: [T, B, G, H, Mb]; A: [G, H, N]; h0: [B, G, H, N].

    Returns (h [T, B, G, H, Mb, N] all states, a the decays, S [B, G, H, Mb, N] chunk-start
    states, h_end [B, G, H, N])."""
    T = dl.shape[0]
    a = _decays(dl, A)
    h = (dl * ul)[..., None] * Bx
    for t in range(1, T):  # local scans of all chunks at once
        h[t].addcmul_(a[t], h[t - 1])
    P = _flush(torch.cumprod(a, dim=0))
    Mb = dl.shape[-1]
    S = torch.empty_like(h[0])
    cur = h0
    for m in range(Mb):  # carry across the chunks of the block
        S[..., m, :] = cur
        cur = torch.addcmul(h[T - 1, ..., m, :], P[T - 1, ..., m, :], cur)
    h.addcmul_(P, S[None])
    return h, a, S, cur


def _y(h, Cx):
    return (h * Cx).sum(-1)  # [T, B, G, H, Mb]


def _from_blocks(yb: torch.Tensor) -> torch.Tensor:
    """[T, B, G, H, Mb] -> [B, G, H, Mb*T]."""
    T, Bb, G, H, Mb = yb.shape
    return yb.permute(1, 2, 3, 4, 0).reshape(Bb, G, H, Mb * T)


def scan_forward(delta, u, A, Bm, Cm, var_b, var_c, T, M):
    """delta, u: [B, G, H, Lp] (Lp a multiple of T); A: [G, H, N]; Bm/Cm: [B, G, Lp, N] or
    [G, H, N]. Returns (y [B, G, H, Lp], last state [B, G, H, N], block-start states)."""
    Bb, G, H, Lp = u.shape
    nch = Lp // T
    h0 = u.new_zeros(Bb, G, H, A.shape[-1])
    ys, starts = [], []
    for m0 in range(0, nch, M):
        Mb = min(M, nch - m0)
        starts.append(h0)
        dl, ul = _to_blocks(delta, T, M, m0, Mb), _to_blocks(u, T, M, m0, Mb)
        h, _, _, h0 = _block_forward(dl, ul, A, _bc_block(Bm, var_b, T, m0, Mb), None, h0)
        ys.append(_from_blocks(_y(h, _bc_block(Cm, var_c, T, m0, Mb))))
        del h
    return torch.cat(ys, dim=-1), h0, starts


def scan_backward(dy, dlast, delta, u, A, Bm, Cm, var_b, var_c, T, M, starts):
    """Gradients of the core scan: (ddelta, du, dA, dB, dC) in the layouts of scan_forward."""
    Bb, G, H, Lp = u.shape
    nch = Lp // T
    ddelta, du = torch.empty_like(delta), torch.empty_like(u)
    dA = torch.zeros_like(A)
    dB, dC = torch.zeros_like(Bm), torch.zeros_like(Cm)
    E = dlast if dlast is not None else u.new_zeros(Bb, G, H, A.shape[-1])  # added to g at the block end
    blocks = list(range(0, nch, M))
    for bi in reversed(range(len(blocks))):
        m0 = blocks[bi]
        Mb = min(M, nch - m0)
        sl = slice(m0 * T, (m0 + Mb) * T)
        dl, ul = _to_blocks(delta, T, M, m0, Mb), _to_blocks(u, T, M, m0, Mb)
        Bx, Cx = _bc_block(Bm, var_b, T, m0, Mb), _bc_block(Cm, var_c, T, m0, Mb)
        h, a, S, _ = _block_forward(dl, ul, A, Bx, Cx, starts[bi])
        dyl = _to_blocks(dy, T, M, m0, Mb)
        # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}; local (zero carry) then chunk carries
        g = dyl[..., None] * Cx
        for t in range(T - 2, -1, -1):
            g[t].addcmul_(a[t + 1], g[t + 1])
        R = torch.ones_like(a)  # R_t = prod_{t < s <= T-1} a_s
        if T > 1:
            R[:-1] = _flush(torch.flip(torch.cumprod(torch.flip(a[1:], [0]), dim=0), [0]))
        Es = torch.empty_like(S)
        for m in range(Mb - 1, -1, -1):
            Es[..., m, :] = E
            E = a[0, ..., m, :] * torch.addcmul(g[0, ..., m, :], R[0, ..., m, :], E)
        g.addcmul_(R, Es[None])
        # h_{t-1}: the chunk-start state for t = 0
        hp = torch.cat([S[None], h[:-1]], dim=0)
        q = g * hp * a  # d loss / d(delta_t A)
        dA += (q * dl[..., None]).sum(dim=(0, 1, 4))
        gb = g * Bx
        sgb = gb.sum(-1)
        ddelta[..., sl] = _from_blocks((q * A[None, None, :, :, None, :]).sum(-1) + sgb * ul)
        du[..., sl] = _from_blocks(sgb * dl)
        w = (dl * ul)[..., None] * g  # d/dB_t: g_t delta_t u_t
        if var_b:
            dB[:, :, sl] = w.sum(3).permute(1, 2, 3, 0, 4).reshape(Bb, G, Mb * T, -1)
        else:
            dB += w.sum(dim=(0, 1, 4))
        hc = dyl[..., None] * h
        if var_c:
            dC[:, :, sl] = hc.sum(3).permute(1, 2, 3, 0, 4).reshape(Bb, G, Mb * T, -1)
        else:
            dC += hc.sum(dim=(0, 1, 4))
        del h, a, g, R, hp, q, gb, w, hc
    return ddelta, du, dA, dB, dC


class SelectiveScanFn(torch.autograd.Function):
    """The core scan (no bias/softplus/D/z) on the blocked layout, with its adjoint backward."""

    @staticmethod
    def forward(ctx, delta, u, A, Bm, Cm, var_b, var_c, T, M):
        with torch.no_grad():
            y, last, starts = scan_forward(delta, u, A, Bm, Cm, var_b, var_c, T, M)
        ctx.save_for_backward(delta, u, A, Bm, Cm, *starts)
        ctx.cfg = (var_b, var_c, T, M)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        delta, u, A, Bm, Cm, *starts = ctx.saved_tensors
        var_b, var_c, T, M = ctx.cfg
        if dy is None:
            dy = torch.zeros_like(u)
        with torch.no_grad():
            grads = scan_backward(dy.contiguous(), dlast, delta, u, A, Bm, Cm, var_b, var_c, T, M, starts)
        return (*grads, None, None, None, None)




def prepare(u, delta, A, B, C, delta_bias, delta_softplus, cdt, T):
    """The public layouts -> the grouped, padded layout of the core (differentiable torch ops).

    Returns (delta [B, G, H, Lp] after bias and softplus, u, A [G, H, N], Bm, Cm, var_b, var_c),
    Lp = L rounded up to a multiple of T (padding: delta = 0, u = 0, B = C = 0)."""
    Bb, Dd, L = u.shape
    N = A.shape[1]
    groups = [X.shape[1] if X.dim() == 4 else 1 for X in (B, C) if X.dim() > 2]
    G = math.lcm(*groups) if groups else 1
    H = Dd // G
    Lp = -(-L // T) * T
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    pad = lambda x: torch.nn.functional.pad(x, (0, Lp - L)) if Lp != L else x  # noqa: E731
    d5 = pad(delta.reshape(Bb, G, H, L))
    u5 = pad(u.to(cdt).reshape(Bb, G, H, L))
    A5 = A.to(cdt).reshape(G, H, N)

    def bc(X):
        X = X.to(cdt)
        if X.dim() == 2:
            return X.reshape(G, H, N), False
        if X.dim() == 3:
            X = X[:, None]
        X = X.repeat_interleave(G // X.shape[1], dim=1) if X.shape[1] != G else X
        return pad(X).transpose(2, 3).contiguous(), True  # [B, G, Lp, N]

    (Bm, var_b), (Cm, var_c) = bc(B), bc(C)
    return d5, u5, A5, Bm, Cm, var_b, var_c


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Same contract as :func:`omicskern.ops.selective_scan.selective_scan` (arguments validated)."""
    Bb, Dd, L = u.shape
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32  # fp32 state accumulation
    T, M = plan(Bb, Dd, A.shape[1], L)
    d5, u5, A5, Bm, Cm, var_b, var_c = prepare(u, delta, A, B, C, delta_bias, delta_softplus, cdt, T)
    y5, last = SelectiveScanFn.apply(d5, u5, A5, Bm, Cm, var_b, var_c, T, M)
    y = y5[..., :L].reshape(Bb, Dd, L)
    if D is not None:
        y = y + D.to(cdt)[:, None] * u.to(cdt)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(cdt))
    y = y.to(u.dtype)
    return (y, last.reshape(Bb, Dd, -1)) if return_last_state else y
