"""Mamba (Gu & Dao 2023) as mamba_ssm 1.x ``Mamba`` builds it, over omicskern's ops, and the
bidirectional wrapper Caduceus uses.

Parameter names follow ``mamba_ssm/modules/mamba_simple.py`` (v1.2.0.post1), so a checkpoint's
mixer weights load unchanged (E = expand * d_model, R = dt_rank)::

    in_proj.weight    [2E, d]      (x first, z second; in_proj.bias [2E] when bias=True)
    conv1d.weight     [E, 1, K]    conv1d.bias [E] (conv_bias)
    x_proj.weight     [R + 2N, E]  (dt, B, C; no bias)
    dt_proj.weight    [E, R]       dt_proj.bias [E]  (added inside the scan, before the softplus)
    A_log             [E, N]       A = -exp(A_log), computed in fp32 as mamba does
    D                 [E]
    out_proj.weight   [d, E]       (out_proj.bias [d] when bias=True)

The forward is the reference's slow path, which its GPU fast path (``mamba_inner_fn``) equals:
in_proj -> depthwise causal conv1d + SiLU (:func:`~omicskern.ops.conv1d.causal_conv1d`) ->
x_proj -> dt_proj -> :func:`~omicskern.ops.selective_scan.selective_scan` (softplus, D skip,
z gate) -> out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omicskern.ops.conv1d import causal_conv1d
from omicskern.ops.selective_scan import selective_scan


class Mamba(nn.Module):
    """One Mamba mixer: ``[B, L, d_model]`` -> ``[B, L, d_model]`` (causal along L).

    Args:
        d_model: width; d_state: N; d_conv: K; expand: E = expand * d_model;
        dt_rank: R, or ``"auto"`` = ceil(d_model / 16); bias: in/out_proj biases; conv_bias.
        scan_backend / conv_backend: backend names for ``selective_scan`` / ``causal_conv1d``.

    Example:
        >>> m = Mamba(32, d_state=8)
        >>> m(torch.randn(2, 50, 32)).shape
        torch.Size([2, 50, 32])
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", bias: bool = False, conv_bias: bool = True,
                 scan_backend: str | None = None, conv_backend: str | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        # S4D-real init as mamba_ssm (A = -(1..N)); checkpoints overwrite it
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.scan_backend = scan_backend
        self.conv_backend = conv_backend

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        L = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2E, L]
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu",
                          backend=self.conv_backend)
        # contiguous [B, L, E] rows: a GEMM on the transposed view is ~500x slower on CPU
        x_dbl = self.x_proj(x.transpose(1, 2).contiguous())  # [B, L, R + 2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # [B, E, L]; the bias goes into the scan
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           backend=self.scan_backend)
        assert y.shape[-1] == L
        return self.out_proj(y.transpose(1, 2).contiguous())


class BiMamba(nn.Module):
    """Caduceus' ``BiMambaWrapper``: ``mamba_fwd(x)`` combined with ``mamba_rev(x.flip(1)).flip(1)``
    (strategy ``"add"``: sum; ``"ew_multiply"``: product). With ``weight_tie`` the reverse mixer's
    in_proj and out_proj *are* the forward mixer's (the same Parameters); conv1d, x_proj,
    dt_proj, A_log and D are its own. ``bidirectional=False`` keeps ``mamba_fwd`` only.
    """

    def __init__(self, d_model: int, bidirectional: bool = True, strategy: str = "add", weight_tie: bool = True,
                 **mamba_kwargs):
        super().__init__()
        if strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {strategy!r}")
        self.strategy = strategy
        self.mamba_fwd = Mamba(d_model, **mamba_kwargs)
        self.mamba_rev = Mamba(d_model, **mamba_kwargs) if bidirectional else None
        if bidirectional and weight_tie:
            self.mamba_rev.in_proj.weight = self.mamba_fwd.in_proj.weight
            self.mamba_rev.in_proj.bias = self.mamba_fwd.in_proj.bias
            self.mamba_rev.out_proj.weight = self.mamba_fwd.out_proj.weight
            self.mamba_rev.out_proj.bias = self.mamba_fwd.out_proj.bias

    def set_backends(self, scan: str | None, conv: str | None) -> None:
        for m in (self.mamba_fwd, self.mamba_rev):
            if m is not None:
                m.scan_backend, m.conv_backend = scan, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mamba_fwd(x)
        if self.mamba_rev is None:
            return out
        rev = self.mamba_rev(x.flip(1)).flip(1)
        return out + rev if self.strategy == "add" else out * rev
