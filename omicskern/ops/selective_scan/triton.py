"""Triton kernels for ``selective_scan``: a chunked parallel scan with the state in registers.

One program owns one sequence and BLOCK_D channels (all inside one B/C group) with their N
states, ``h: [BLOCK_D, N]`` in registers, and walks L in chunks of BLOCK_L positions. Within a
chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(delta_t A)``, ``b_t = delta_t B_t
u_t``) is one ``tl.associative_scan`` over the chunk axis of ``[BLOCK_D, BLOCK_L, N]`` pairs with
the operator ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)`` (products of decays in (0, 1], no
overflow), then ``h = P_t h_start + h_local``; the chunk's last state carries to the next chunk.
The D skip and the z gate are fused into the epilogue; states and sums are fp32 (fp64 for fp64
inputs). The forward also writes every chunk's start state (``[B, D, n_chunks, N]``, N/BLOCK_L of
the input size), from which the backward recomputes each chunk's states.

Backward: one program per (sequence, channel block), chunks in reverse order: it recomputes the
chunk's states (and, with inputs shifted by one position, the states ``h_{t-1}``), runs the
adjoint recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` as a reverse associative scan carrying
``a g`` across chunks, and forms every gradient. Variable dB/dC are sums over channels of several
programs (fp32 atomic adds); the per-channel sums over time (dA, dD, invariant dB/dC) are per
(sequence, channel) partials reduced in torch. The delta bias and softplus are torch ops around
the kernels (autograd), as are the group expansion and the cast of A.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_N = 256


def _vectorised_interpreter_scan() -> None:
    """Under ``TRITON_INTERPRET=1``, run ``tl.associative_scan`` one position of the scan axis at a
    time over whole slices, instead of the interpreter's one *element* at a time (~1 ms each:
    minutes for a small scan). A combine function is elementwise by Triton's definition, so
    applying it to slices gives the same values in the same order of operations; only the
    interpreter's Python loop changes. Compiled kernels are unaffected."""
    from triton.runtime import interpreter as ti

    ops = getattr(ti, "ScanOps", None)
    if ops is None or getattr(ops, "_omicskern_vectorised", False) or not hasattr(ops, "generic_scan"):
        return

    def generic_scan(self, input):
        import numpy as np

        data = [arg.handle.data for arg in input]
        outs = [np.zeros_like(d) for d in data]
        ax = self.axis
        for i in range(data[0].shape[ax]):
            cur = tuple(self.to_tensor(np.take(d, i, axis=ax), input[j].dtype) for j, d in enumerate(data))
            if i > 0:
                prev = tuple(self.to_tensor(np.take(o, i - 1, axis=ax), input[j].dtype) for j, o in enumerate(outs))
                cur = self.combine_fn.fn(*prev, *cur)
                cur = cur if isinstance(cur, tuple) else (cur,)
            for j, o in enumerate(outs):
                idx = [slice(None)] * o.ndim
                idx[ax] = i
                o[tuple(idx)] = cur[j].handle.data
        return [self.to_tensor(o, input[j].dtype) for j, o in enumerate(outs)]

    ops.generic_scan = generic_scan
    ops._omicskern_vectorised = True


if __import__("os").environ.get("TRITON_INTERPRET", "0") == "1":
    _vectorised_interpreter_scan()


def unsupported_reason(u, A) -> str | None:
    if A is not None and A.shape[1] > MAX_N:
        return f"the Triton selective_scan keeps N <= {MAX_N} states in registers (got {A.shape[1]})"
    return None


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_bc(ptr, b, g, d, dm, n, nm, t, tm, L, G, N, VAR: tl.constexpr):
    """B or C as a [BD or 1, BL or 1, NP] tensor (variable: [1, BL, NP]; invariant: [BD, 1, NP])."""
    if VAR:
        x = tl.load(ptr + ((b * G + g) * N + n[None, :]) * L + t[:, None], mask=nm[None, :] & tm[:, None], other=0.0)
        return x.to(tl.float32)[None, :, :]
    else:
        x = tl.load(ptr + d[:, None] * N + n[None, :], mask=dm[:, None] & nm[None, :], other=0.0)
        return x.to(tl.float32)[:, None, :]


@triton.jit
def _fwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, out_ptr, hs_ptr, last_ptr,
                Dd, L, H, G, N, NCH,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr,
                BD: tl.constexpr, BL: tl.constexpr, NP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BD
    d = d0 + tl.arange(0, BD)
    dm = d < Dd
    g = d0 // H
    n = tl.arange(0, NP)
    nm = n < N
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dm[:, None] & nm[None, :], other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(tl.float32)
    h = tl.zeros([BD, NP], dtype=tl.float32)
    pos = tl.arange(0, BL)
    for c in range(NCH):
        tl.store(hs_ptr + ((b * Dd + d[:, None]) * NCH + c) * N + n[None, :], h, mask=dm[:, None] & nm[None, :])
        t = c * BL + pos
        tm = t < L
        m2 = dm[:, None] & tm[None, :]
        off = (b * Dd + d[:, None]) * L + t[None, :]
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        dl = tl.load(dl_ptr + off, mask=m2, other=0.0).to(tl.float32)
        a = tl.exp(dl[:, :, None] * A[:, None, :])
        x = (dl * u)[:, :, None] * _load_bc(B_ptr, b, g, d, dm, n, nm, t, tm, L, G, N, VAR_B)
        P, hl = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
        hh = P * h[:, None, :] + hl
        y = tl.sum(hh * _load_bc(C_ptr, b, g, d, dm, n, nm, t, tm, L, G, N, VAR_C), axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=m2)
        # padded positions have delta = 0 (a = 1, b = 0): the chunk's last row is the last state
        h = tl.sum(tl.where((pos == BL - 1)[None, :, None], hh, 0.0), axis=1)
    tl.store(last_ptr + (b * Dd + d[:, None]) * N + n[None, :], h, mask=dm[:, None] & nm[None, :])


@triton.jit
def _bwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dout_ptr, hs_ptr, dlast_ptr,
                du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
                Dd, L, H, G, N, NCH,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr,
                HAS_DLAST: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, NP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BD
    d = d0 + tl.arange(0, BD)
    dm = d < Dd
    g = d0 // H
    n = tl.arange(0, NP)
    nm = n < N
    dn = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dm, other=0.0).to(tl.float32)
    if HAS_DLAST:
        E = tl.load(dlast_ptr + (b * Dd + d[:, None]) * N + n[None, :], mask=dn, other=0.0).to(tl.float32)
    else:
        E = tl.zeros([BD, NP], dtype=tl.float32)
    dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
    dB_acc = tl.zeros([BD, NP], dtype=tl.float32)
    dC_acc = tl.zeros([BD, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    pos = tl.arange(0, BL)
    for i in range(NCH):
        c = NCH - 1 - i
        h0 = tl.load(hs_ptr + ((b * Dd + d[:, None]) * NCH + c) * N + n[None, :], mask=dn, other=0.0)
        t = c * BL + pos
        tm = t < L
        m2 = dm[:, None] & tm[None, :]
        off = (b * Dd + d[:, None]) * L + t[None, :]
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        dl = tl.load(dl_ptr + off, mask=m2, other=0.0).to(tl.float32)
        Bv = _load_bc(B_ptr, b, g, d, dm, n, nm, t, tm, L, G, N, VAR_B)
        Cv = _load_bc(C_ptr, b, g, d, dm, n, nm, t, tm, L, G, N, VAR_C)
        a = tl.exp(dl[:, :, None] * A[:, None, :])
        P, hl = tl.associative_scan((a, (dl * u)[:, :, None] * Bv), axis=1, combine_fn=_combine)
        hh = P * h0[:, None, :] + hl
        # h_{t-1}: the same scan on inputs shifted by one (position 0 gets (1, 0): h0)
        tp = t - 1
        mp = dm[:, None] & (pos > 0)[None, :] & (tp < L)[None, :]
        offp = (b * Dd + d[:, None]) * L + tp[None, :]
        up = tl.load(u_ptr + offp, mask=mp, other=0.0).to(tl.float32)
        dlp = tl.load(dl_ptr + offp, mask=mp, other=0.0).to(tl.float32)
        Bp = _load_bc(B_ptr, b, g, d, dm, n, nm, tp, (pos > 0) & (tp < L), L, G, N, VAR_B)
        Pp, hlp = tl.associative_scan((tl.exp(dlp[:, :, None] * A[:, None, :]), (dlp * up)[:, :, None] * Bp),
                                      axis=1, combine_fn=_combine)
        hprev = Pp * h0[:, None, :] + hlp
        # a_{t+1} inside the chunk (1 at its last position: the carry E brings the rest)
        tn = t + 1
        mn = dm[:, None] & (pos < BL - 1)[None, :] & (tn < L)[None, :]
        dln = tl.load(dl_ptr + (b * Dd + d[:, None]) * L + tn[None, :], mask=mn, other=0.0).to(tl.float32)
        an = tl.exp(dln[:, :, None] * A[:, None, :])
        # epilogue backward: out = (y + D u) * silu(z)
        dout = tl.load(dout_ptr + off, mask=m2, other=0.0).to(tl.float32)
        y = tl.sum(hh * Cv, axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            sz = 1.0 / (1.0 + tl.exp(-z))
            tl.store(dz_ptr + off, (dout * y * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m2)
            dy = dout * z * sz
        else:
            dy = dout
        R, gl = tl.associative_scan((an, dy[:, :, None] * Cv), axis=1, combine_fn=_combine, reverse=True)
        gg = gl + R * E[:, None, :]
        E = tl.sum(tl.where((pos == 0)[None, :, None], a * gg, 0.0), axis=1)
        q = gg * hprev * a  # d loss / d(delta_t A)
        dA_acc += tl.sum(q * dl[:, :, None], axis=1)
        sgb = tl.sum(gg * Bv, axis=2)
        ddl = tl.sum(q * A[:, None, :], axis=2) + sgb * u
        du = sgb * dl
        if HAS_D:
            du += dy * Dv[:, None]
            dD_acc += tl.sum(dy * u, axis=1)
        tl.store(ddl_ptr + off, ddl.to(ddl_ptr.dtype.element_ty), mask=m2)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        w = gg * (dl * u)[:, :, None]
        hc = dy[:, :, None] * hh
        if VAR_B:
            tl.atomic_add(dB_ptr + ((b * G + g) * N + n[None, :]) * L + t[:, None], tl.sum(w, axis=0),
                          mask=nm[None, :] & tm[:, None])
        else:
            dB_acc += tl.sum(w, axis=1)
        if VAR_C:
            tl.atomic_add(dC_ptr + ((b * G + g) * N + n[None, :]) * L + t[:, None], tl.sum(hc, axis=0),
                          mask=nm[None, :] & tm[:, None])
        else:
            dC_acc += tl.sum(hc, axis=1)
    po = (b * Dd + d[:, None]) * N + n[None, :]
    tl.store(dA_ptr + po, dA_acc, mask=dn)
    if not VAR_B:
        tl.store(dB_ptr + po, dB_acc, mask=dn)
    if not VAR_C:
        tl.store(dC_ptr + po, dC_acc, mask=dn)
    if HAS_D:
        tl.store(dD_ptr + b * Dd + d, dD_acc, mask=dm)


def _bwd_bd(BD: int, BL: int, NP: int, interpret: bool) -> int:
    """Channels per backward program: the backward keeps ~12 live [BD, BL, NP] tiles, so its
    tile is an eighth of the forward's (512 elements: no register spills at sm_90, 4 warps)."""
    if interpret:
        return BD
    bd = BD
    while bd > 1 and bd * BL * NP > 512:
        bd //= 2
    return bd


def _blocks(H: int, N: int, L: int, interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, N padded) of the forward; BLOCK_L is also the backward's chunk."""
    NP = triton.next_power_of_2(max(N, 1))
    BD = 1
    while BD < 8 and H % (2 * BD) == 0:  # a channel block never straddles two groups
        BD *= 2
    cap = 1024 if interpret else 4096  # elements of one [BD, BL, NP] tile
    BL = max(16, min(triton.next_power_of_2(max(L, 1)), triton.next_power_of_2(max(1, cap // (BD * NP)))))
    return BD, BL, NP


def _dev_args(u, B, C):
    """Group count G (B and C variable layouts expanded to a common G by the caller)."""
    for X in (B, C):
        if X.dim() == 4:
            return X.shape[1]
    return 1


class SelectiveScanTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z):
        batch, Dd, L = u.shape
        N = A.shape[1]
        G = _dev_args(u, B, C)
        H = Dd // G
        BD, BL, NP = _blocks(H, N, L, u.device.type == "cpu")
        nch = triton.cdiv(L, BL)
        var_b, var_c = B.dim() == 4, C.dim() == 4
        out = torch.empty_like(u)
        hs = torch.empty(batch, Dd, nch, N, dtype=torch.float32, device=u.device)
        last = torch.empty(batch, Dd, N, dtype=torch.float32, device=u.device)
        grid = (batch, triton.cdiv(Dd, BD))
        _fwd_kernel[grid](u, delta, A, B, C, D if D is not None else A, z if z is not None else u, out, hs, last,
                          Dd, L, H, G, N, nch, HAS_D=D is not None, HAS_Z=z is not None, VAR_B=var_b,
                          VAR_C=var_c, BD=BD, BL=BL, NP=NP)
        ctx.save_for_backward(u, delta, A, B, C, D, z, hs)
        ctx.cfg = (G, H, BD, BL, NP, nch)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, hs = ctx.saved_tensors
        G, H, BD, BL, NP, nch = ctx.cfg
        batch, Dd, L = u.shape
        N = A.shape[1]
        var_b, var_c = B.dim() == 4, C.dim() == 4
        f32 = dict(dtype=torch.float32, device=u.device)
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        du, ddl = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = torch.empty(batch, Dd, N, **f32)
        dB = torch.zeros(B.shape, **f32) if var_b else torch.empty(batch, Dd, N, **f32)
        dC = torch.zeros(C.shape, **f32) if var_c else torch.empty(batch, Dd, N, **f32)
        dD = torch.empty(batch, Dd, **f32) if D is not None else None
        BD = _bwd_bd(BD, BL, NP, u.device.type == "cpu")
        grid = (batch, triton.cdiv(Dd, BD))
        _bwd_kernel[grid](u, delta, A, B, C, D if D is not None else A, z if z is not None else u, dout, hs,
                          dlast.contiguous() if dlast is not None else hs,
                          du, ddl, dz if dz is not None else du, dA, dB, dC, dD if dD is not None else dA,
                          Dd, L, H, G, N, nch, HAS_D=D is not None, HAS_Z=z is not None, VAR_B=var_b,
                          VAR_C=var_c, HAS_DLAST=dlast is not None, BD=BD, BL=BL, NP=NP)
        dA = dA.sum(0).to(A.dtype)
        dB = dB.to(B.dtype) if var_b else dB.sum(0).to(B.dtype)
        dC = dC.to(C.dtype) if var_c else dC.sum(0).to(C.dtype)
        return du, ddl, dA, dB, dC, (dD.sum(0).to(D.dtype) if D is not None else None), dz


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """Same contract as :func:`omicskern.ops.selective_scan.selective_scan` (arguments validated)."""
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    if cdt == torch.float64:  # the kernels accumulate in fp32; fp64 goes through the exact torch scan
        from omicskern.ops.selective_scan.torch import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    Dd = u.shape[1]
    if delta_bias is not None:
        delta = delta.float() + delta_bias.float()[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta.float())
    groups = [X.shape[1] if X.dim() == 4 else 1 for X in (B, C) if X.dim() > 2]
    G = math.lcm(*groups) if groups else 1

    def bc(X):
        if X.dim() == 2:
            return X.contiguous()
        X = X[:, None] if X.dim() == 3 else X
        return (X.repeat_interleave(G // X.shape[1], dim=1) if X.shape[1] != G else X).contiguous()

    out, last = SelectiveScanTritonFn.apply(u.contiguous(), delta.contiguous(), A.float().contiguous(), bc(B), bc(C),
                                            D.float().contiguous() if D is not None else None,
                                            z.contiguous() if z is not None else None)
    del Dd
    return (out, last) if return_last_state else out


# -- the sm_90 compile check (benchmarks/sm90_compile_check.py, tests/ops/test_sm90_compile.py) -------
_F32_PTRS = ("A_ptr", "D_ptr", "hs_ptr", "last_ptr", "dlast_ptr", "dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr")


def sm90_launches(full: bool = True) -> list[dict]:
    """The forward and backward launches the dispatch makes on sm_90 (compiled mode: the block
    choice of :func:`_blocks` / :func:`_bwd_bd`, Triton's default 4 warps and 3 stages), per
    activation dtype (A, D, states and parameter gradients stay fp32). ``full=False``: the
    Caduceus-131k configuration (d_inner 512, N 16, L 131072, variable B/C, D, z) in bf16. FMA-only
    kernels (the scan is elementwise + ``tl.associative_scan``): no MMA expected."""
    import torch as _torch

    dts = {"bf16": _torch.bfloat16, "fp16": _torch.float16, "fp32": _torch.float32}
    shapes = [(512, 16, 131072)] + ([(256, 16, 1024), (1536, 16, 4096), (2048, 16, 131072), (512, 4, 131072)]
                                    if full else [])
    out = []
    for H, N, L in shapes:
        BD, BL, NP = _blocks(H, N, L, False)
        for tn in (dts if full else ("bf16",)):
            for var in ((True, False) if full else (True,)):
                for name, fn in (("fwd", _fwd_kernel), ("bwd", _bwd_kernel)):
                    bd = _bwd_bd(BD, BL, NP, False) if name == "bwd" else BD
                    cons = dict(HAS_D=True, HAS_Z=True, VAR_B=var, VAR_C=var, HAS_DLAST=True, BD=bd, BL=BL, NP=NP)
                    cons = {k: v for k, v in cons.items() if k in fn.arg_names}
                    types = {n: ("*fp32" if n in _F32_PTRS else f"*{tn}") for n in fn.arg_names if n.endswith("_ptr")}
                    out.append(dict(kernel=f"scan_{name}", fn=fn, types=types, constexprs=cons, num_warps=4,
                                    num_stages=3, mma=None,
                                    tags=f"d_inner {H} N{N} L{L} {tn}{' varBC' if var else ' fixedBC'}"))
    return out
