"""Plain-PyTorch definition of the selective scan (Mamba's S6 recurrence) and its one-step update.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (mamba_ssm 1.x ``selective_scan_ref``)::

    delta'[b,d,t] = softplus(delta[b,d,t] + delta_bias[d])     (softplus / bias optional)
    h[b,d,t,n]    = exp(delta'[b,d,t] A[d,n]) h[b,d,t-1,n] + delta'[b,d,t] B[b,g(d),n,t] u[b,d,t]
    y[b,d,t]      = sum_n C[b,g(d),n,t] h[b,d,t,n] + D[d] u[b,d,t]
    out           = y * silu(z)                                (z optional)

with ``h[..., -1, :] = 0`` and ``g(d) = d // (D / G)`` for grouped B/C ``[B, G, N, L]``
(``[B, N, L]`` is G = 1; time-invariant ``[D, N]`` drops the ``b, g, t`` indices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_bc(X: torch.Tensor, Dd: int) -> tuple[torch.Tensor, bool]:
    """B or C -> ([b, d, n, t] variable or [d, n] invariant, variable?)."""
    if X.dim() == 2:
        return X, False
    if X.dim() == 3:
        X = X[:, None]
    G = X.shape[1]
    return X.repeat_interleave(Dd // G, dim=1), True


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The sequential definition (a loop over L), differentiable by plain autograd.

    Computes in float64 when any input is float64, else float32 (whatever the input dtype), and
    returns ``out`` in that dtype (callers cast); ``last_state`` ``[B, D, N]`` is the state after
    the last step (before D and z). Shapes as :func:`omicskern.ops.selective_scan.selective_scan`.
    """
    ts = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    cdt = torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32
    u, delta, A = u.to(cdt), delta.to(cdt), A.to(cdt)
    Bt, var_b = _expand_bc(B.to(cdt), u.shape[1])
    Ct, var_c = _expand_bc(C.to(cdt), u.shape[1])
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        bt = Bt[..., t] if var_b else Bt
        h = torch.exp(dt * A) * h + dt * bt * u[:, :, t, None]
        ct = Ct[..., t] if var_c else Ct
        ys.append((h * ct).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(cdt)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return (y, h) if return_last_state else y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step of the recurrence (recurrent decoding): updates ``state`` [B, D, N] in place and
    returns ``out`` [B, D]. ``x, dt, z``: [B, D]; ``A``: [D, N]; ``B, C``: [B, N] or [B, G, N]."""
    cdt = torch.float64 if state.dtype == torch.float64 else torch.float32
    Dd = x.shape[1]
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)

    def grp(X):
        X = X.to(cdt)
        return X[:, None] if X.dim() == 2 else X.repeat_interleave(Dd // X.shape[1], dim=1)

    Bt, Ct, xc = grp(B), grp(C), x.to(cdt)
    h = torch.exp(dt[..., None] * A.to(cdt)) * state.to(cdt) + dt[..., None] * Bt * xc[..., None]
    state.copy_(h.to(state.dtype))
    y = (h * Ct).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * xc
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)
