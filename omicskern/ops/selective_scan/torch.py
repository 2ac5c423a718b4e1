"""The ``torch`` backend of ``selective_scan``: an exact chunked scan with no Python loop over L.

Layout. Channels are split as ``D = G * H`` (G = the B/C groups); L is padded to a multiple of the
chunk length T with ``delta = 0`` (decay 1, input 0: the state passes through unchanged, so the
last state is the one at the real end) and cut into *blocks* of ``M`` chunks, one block processed
at a time so memory stays ``O(B D N T M)`` whatever L is. Inside a block every tensor is
``[T, B, G, H, M, N]``: the position inside the chunk outermost, so that a time step of all M
chunks is one contiguous slice.

Per block (``a_t = exp(delta_t A) in (0, 1]`` since A < 0, ``x_t = delta_t B_t u_t``):

1. chunk-end states from a zero start, ``l_t = a_t l_{t-1} + x_t``, a loop over the T positions
   of a chunk in which each step is one vector op over all M chunks (rolled: not stored);
2. each chunk's total decay ``P = prod_t a_t`` (products of numbers in (0, 1] only shrink: no
   overflow, and an underflow to 0 is the true value rounded);
3. the carry: chunk m starts from ``S_m = P^(m-1) S_{m-1} + l_end^(m-1)`` (a loop over the M
   chunks on ``[B, D, N]`` states; the first chunk starts from the previous block's end);
4. the plain recurrence ``h_t = a_t h_{t-1} + x_t`` from each chunk's ``S_m``, again one vector op
   per position over all chunks, with ``y_t = <h_t, C_t>`` formed on the fly.

Step 4 is the sequential definition itself; only the chunk starts come through steps 1-3, a
re-grouping of the same non-negatively weighted sums, so the rounding is that of the sequential
scan (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64). No ``exp(-cumsum)`` factorisation is used:
it overflows once ``sum delta A < -88`` within a chunk (fp32), which real Mamba layers reach.
``delta A`` is clamped at -80 (fp32; -700 fp64) before the exp and chunk decays below ``e^-80``
are set to 0, so no subnormal number appears (they slow x86 multiplies ~100x); a decay of
``e^-80`` scales a state by 1.8e-35, far below fp32 resolution.

Backward (:class:`SelectiveScanFn`) stores only the block-start states; it recomputes each
block's states from them and runs the adjoint recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}``
with the same chunked scheme, backwards, blocks in reverse order. The D skip, z gate, delta bias
and softplus are plain differentiable torch ops around it (:func:`selective_scan_torch`).
"""

from __future__ import annotations

import math

import torch

# elements of one [T, B, G, H, M, N] block tensor: ~16 MB in fp32; a block holds ~5 of them
_BLOCK_ELEMS = 1 << 22
# delta A is clamped here before the exp (and chunk decays below exp() of it set to 0): far below
# the dtype's resolution of any state they multiply (e^-80 = 1.8e-35), and never subnormal
# (subnormal operands make x86 multiplies ~100x slower)
_LOG_TINY = {torch.float32: -80.0, torch.float64: -700.0}


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


def _block_inputs(dl, ul, A, Bx):
    """Decays a = exp(delta A) and inputs x = delta B u of one block, [T, B, G, H, Mb, N]."""
    dA = dl[..., None] * A[None, None, :, :, None, :]
    a = dA.clamp_min_(_LOG_TINY[dA.dtype]).exp_()  # in (0, 1]; see _LOG_TINY
    return a, (dl * ul)[..., None] * Bx


def _chunk_starts(a, x, h0):
    """States at the start of each chunk of the block ([B, G, H, Mb, N]) and at its end."""
    T = a.shape[0]
    loc = x[0]
    for t in range(1, T):  # chunk-end states from a zero start, all chunks at once
        loc = torch.addcmul(x[t], a[t], loc)
    Pend = _flush(torch.prod(a, dim=0))  # each chunk's total decay
    S = torch.empty_like(loc)
    cur = h0
    for m in range(a.shape[-2]):  # the carry across the chunks of the block
        S[..., m, :] = cur
        cur = torch.addcmul(loc[..., m, :], Pend[..., m, :], cur)
    return S, cur


def _block_forward(dl, ul, A, Bx, Cx, h0):
    """One block, no autograd: (y [T, B, G, H, Mb], end state [B, G, H, N]). The states are
    rolled, never stored: the second pass runs the plain recurrence from each chunk's start."""
    a, x = _block_inputs(dl, ul, A, Bx)
    S, end = _chunk_starts(a, x, h0)
    T = a.shape[0]
    y = dl.new_empty(dl.shape)
    cur = S
    for t in range(T):
        cur = torch.addcmul(x[t], a[t], cur)
        y[t] = (cur * Cx[t if Cx.shape[0] > 1 else 0]).sum(-1)
    return y, end


def _block_states(dl, ul, A, Bx, h0):
    """All states h [T, B, G, H, Mb, N] of one block, the decays and the chunk starts."""
    a, x = _block_inputs(dl, ul, A, Bx)
    S, _ = _chunk_starts(a, x, h0)
    h = x  # overwritten in place, position by position
    h[0].addcmul_(a[0], S)
    for t in range(1, a.shape[0]):
        h[t].addcmul_(a[t], h[t - 1])
    return h, a, S


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
        y, h0 = _block_forward(dl, ul, A, _bc_block(Bm, var_b, T, m0, Mb), _bc_block(Cm, var_c, T, m0, Mb), h0)
        ys.append(_from_blocks(y))
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
        h, a, S = _block_states(dl, ul, A, Bx, starts[bi])
        dyl = _to_blocks(dy, T, M, m0, Mb)
        # adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}: chunk-start values from a zero carry, the
        # carries E_m (what flows into each chunk's last position), then the plain recurrence
        g = dyl[..., None] * Cx
        loc = g[T - 1]
        for t in range(T - 2, -1, -1):
            loc = torch.addcmul(g[t], a[t + 1], loc)
        R0 = _flush(torch.prod(a[1:], dim=0)) if T > 1 else torch.ones_like(loc)  # prod_{0 < s < T} a_s
        Es = torch.empty_like(S)
        for m in range(Mb - 1, -1, -1):
            Es[..., m, :] = E
            E = a[0, ..., m, :] * torch.addcmul(loc[..., m, :], R0[..., m, :], E)
        g[T - 1] += Es
        for t in range(T - 2, -1, -1):
            g[t].addcmul_(a[t + 1], g[t + 1])
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
        del h, a, g, hp, q, gb, w, hc
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
