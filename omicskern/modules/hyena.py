"""Hyena operator (Poli et al. 2023) as HyenaDNA builds it, over omicskern's ``fft_conv``.

Numerics and parameter/buffer names follow HyenaDNA's ``standalone_hyenadna.py`` so that a
HyenaDNA checkpoint's mixer weights load with ``load_state_dict`` unchanged (``strict=True``)::

    in_proj.weight            [(order+1) d, d]      in_proj.bias   [(order+1) d]
    out_proj.weight           [d, d]                out_proj.bias  [d]
    short_filter.weight       [(order+1) d, 1, 3]   short_filter.bias [(order+1) d]
    filter_fn.bias            [(order-1) d]         the skip term D of the long convolution
    filter_fn.pos_emb.z       [1, l_max, emb_dim]   buffer (a parameter when lr_pos_emb != 0)
    filter_fn.pos_emb.t       [1, l_max, 1]         buffer
    filter_fn.implicit_filter.0.weight/bias   [filter_order, emb_dim] / [filter_order]
    filter_fn.implicit_filter.{1,3,5}.freq    [1, filter_order]  ONE shared Sin parameter
    filter_fn.implicit_filter.{2,4}.weight/bias  [filter_order, filter_order] / [filter_order]
    filter_fn.implicit_filter.6.weight        [(order-1) d, filter_order]  (no bias)
    filter_fn.modulation.deltas               [1, 1, (order-1) d]  buffer

With ``bidirectional=True`` (and ``bidirectional_tied=False``) a second filter
``filter_fn_rev.*`` (same layout, without ``bias``) supplies the anti-causal half of a two-sided
kernel; see :class:`HyenaOperator`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omicskern.ops.conv1d import causal_conv1d
from omicskern.ops.fftconv import fft_conv


class Sin(nn.Module):
    """``sin(freq * x)`` with a learnable per-channel frequency ``freq`` [1, dim] (init ``w``)."""

    def __init__(self, dim: int, w: float = 10.0, train_freq: bool = True):
        super().__init__()
        freq = w * torch.ones(1, dim)
        if train_freq:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """HyenaDNA's filter input features over ``l_max`` positions, sliced to the first L.

    ``t = i / (l_max - 1)``; with ``w_i = 2 pi i / l_max`` (note: l_max, not l_max-1) and
    ``bands = (emb_dim-1)//2`` frequencies ``f = linspace(1e-4, bands-1, bands)``,
    ``z = [t, cos(f w), -sin(f w)]`` ([1, l_max, emb_dim]). Because the features are built for
    l_max, a filter at length L < l_max is a prefix of the filter at l_max.
    """

    def __init__(self, emb_dim: int, seq_len: int, lr_pos_emb: float = 0.0):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError("PositionalEmbedding: emb_dim must be odd and >= 3 (time, cos, sin), "
                             f"got {emb_dim}")
        self.seq_len = seq_len
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        # exp(-i f w) = cos(f w) - i sin(f w); computed the same way as HyenaDNA (complex64) so the
        # float32 buffers agree bit for bit with a released checkpoint's.
        zc = torch.exp(-1j * f * w)
        z = torch.cat([t, zc.real, zc.imag], dim=-1)
        if lr_pos_emb == 0.0:
            self.register_buffer("z", z)
        else:
            self.z = nn.Parameter(z)
        self.register_buffer("t", t)

    def forward(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    """``h * (exp(-t |deltas|) + shift)``, deltas = linspace(ln(target)/slow, ln(target)/fast, d)."""

    def __init__(self, d_model: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, modulate: bool = True, shift: float = 0.05):
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.modulate:
            x = x * (torch.exp(-t * self.deltas.abs()) + self.shift)
        return x


class HyenaFilter(nn.Module):
    """Implicit long filter: MLP with sine activations over positional features, then decay.

    ``filter(L)`` returns the kernel [1, L, d_model] (HyenaDNA's layout); ``bias`` [d_model] is the
    skip term D of the convolution (not an MLP bias).
    """

    def __init__(self, d_model: int, emb_dim: int = 3, order: int = 16, seq_len: int = 1024,
                 lr_pos_emb: float = 0.0, dropout: float = 0.0, w: float = 1.0,
                 num_inner_mlps: int = 2, use_bias: bool = True, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, target: float = 1e-2, modulate: bool = True,
                 shift: float = 0.05):
        super().__init__()
        self.d_model = d_model
        # Construction order mirrors HyenaDNA's (bias, Sin, pos_emb, MLP), so a seeded init draws
        # the same random numbers.
        if use_bias:
            self.bias = nn.Parameter(torch.randn(d_model))
        else:
            self.register_parameter("bias", None)
        self.dropout = nn.Dropout(dropout)
        act = Sin(dim=order, w=w)
        self.emb_dim = emb_dim
        self.seq_len = seq_len
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len, lr_pos_emb)
        layers: list[nn.Module] = [nn.Linear(emb_dim, order), act]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(order, order), act]  # the same Sin (one shared freq) in every slot
        layers.append(nn.Linear(order, d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d_model, fast_decay_pct=fast_decay_pct,
                                                slow_decay_pct=slow_decay_pct, target=target,
                                                modulate=modulate, shift=shift)

    def filter(self, L: int) -> torch.Tensor:
        if L > self.seq_len:
            raise ValueError(f"HyenaFilter: length {L} exceeds l_max={self.seq_len} "
                             "(the positional features are built for l_max)")
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        return self.modulation(t, h)


class HyenaOperator(nn.Module):
    """Hyena mixer: in-projection, short causal conv, order-N gated long convolutions, out-projection.

    For order 2 (HyenaDNA): ``x0, x1, v = short_conv(in_proj(u))``; ``v = fftconv(v * x1, k) * x0``
    (with skip term D = ``filter_fn.bias``); ``y = out_proj(v)``. For order N the recurrence is
    ``v = v * x_{N-1}; v = conv(v, k_0) * x_{N-2}; ...; v = conv(v, k_{N-2}) * x_0``; every gate
    after a convolution is fused into ``fft_conv``.

    Args:
        d_model: width d; u: [B, L, d] -> y: [B, L, d], L <= l_max.
        l_max: the filter's positional features are built for this length (a checkpoint's
            ``filter_fn.pos_emb.z`` has it as dim 1).
        order: depth of the recurrence (2 in HyenaDNA).
        filter_order: width of the implicit MLP (64 in HyenaDNA).
        emb_dim, w, num_inner_mlps, modulate, fast_decay_pct, slow_decay_pct, target, shift,
            lr_pos_emb: HyenaFilter options, defaults as in HyenaDNA's ``HyenaFilter``
            (released HyenaDNA configs use emb_dim=5, w=10).
        short_filter_order: kernel size of the depthwise short conv (3 in HyenaDNA, whose config
            key ``local_order`` is ignored by the reference code).
        bidirectional: use two-sided long convolutions (``fft_conv(causal=False)``): the kernel at
            lag d >= 0 (past) is the causal filter's ``k[d]``, at lag -d (future) ``k_rev[d-1]``.
            ``bidirectional_tied=True`` uses the causal filter for both sides (no new weights);
            otherwise ``filter_fn_rev`` (same layout, no bias) gives ``k_rev``. The short conv
            stays causal.
        fft_backend / conv_backend: backend names passed to ``fft_conv`` / ``causal_conv1d``.

    Example:
        >>> op = HyenaOperator(d_model=128, l_max=1026, emb_dim=5, w=10)
        >>> y = op(torch.randn(2, 1000, 128))  # [2, 1000, 128]
    """

    def __init__(self, d_model: int, l_max: int, order: int = 2, filter_order: int = 64,
                 dropout: float = 0.0, filter_dropout: float = 0.0, emb_dim: int = 3,
                 w: float = 1.0, num_inner_mlps: int = 2, modulate: bool = True,
                 fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2,
                 shift: float = 0.05, lr_pos_emb: float = 0.0, short_filter_order: int = 3,
                 bidirectional: bool = False, bidirectional_tied: bool = False,
                 fft_backend: str | None = None, conv_backend: str | None = None):
        super().__init__()
        if order < 2:
            raise ValueError(f"HyenaOperator: order must be >= 2, got {order}")
        self.d_model = d_model
        self.l_max = l_max
        self.order = order
        self.bidirectional = bidirectional
        self.bidirectional_tied = bidirectional_tied
        self.fft_backend = fft_backend
        self.conv_backend = conv_backend
        inner_width = d_model * (order + 1)
        self.dropout = nn.Dropout(dropout)
        self.in_proj = nn.Linear(d_model, inner_width)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(inner_width, inner_width, short_filter_order,
                                      padding=short_filter_order - 1, groups=inner_width)
        filter_kw = dict(emb_dim=emb_dim, order=filter_order, seq_len=l_max, lr_pos_emb=lr_pos_emb,
                         dropout=filter_dropout, w=w, num_inner_mlps=num_inner_mlps,
                         fast_decay_pct=fast_decay_pct, slow_decay_pct=slow_decay_pct,
                         target=target, modulate=modulate, shift=shift)
        self.filter_fn = HyenaFilter(d_model * (order - 1), **filter_kw)
        if bidirectional and not bidirectional_tied:
            self.filter_fn_rev = HyenaFilter(d_model * (order - 1), use_bias=False, **filter_kw)

    def long_filters(self, L: int) -> torch.Tensor:
        """Kernels [order-1, d, L] (causal) or [order-1, d, 2L-1] (bidirectional, centred)."""
        k = self.filter_fn.filter(L)[0]  # [L, (order-1) d]
        k = k.transpose(0, 1).reshape(self.order - 1, self.d_model, L)
        if not self.bidirectional:
            return k
        if self.bidirectional_tied:
            k_rev = k
        else:
            k_rev = self.filter_fn_rev.filter(L)[0].transpose(0, 1).reshape(self.order - 1, self.d_model, L)
        # centred kernel: index L-1+d holds lag d; lags -1..-(L-1) come from k_rev[0..L-2]
        return torch.cat([k_rev[..., :L - 1].flip(-1), k], dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, L, d] -> [B, L, d]."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"HyenaOperator: expected u of shape [B, L, {self.d_model}], "
                             f"got {tuple(u.shape)}")
        L = u.shape[-2]
        if L > self.l_max:
            raise ValueError(f"HyenaOperator: sequence length {L} exceeds l_max={self.l_max}")
        x = self.in_proj(u).transpose(1, 2)  # [B, (order+1) d, L]
        x = causal_conv1d(x, self.short_filter.weight.squeeze(1), self.short_filter.bias,
                          backend=self.conv_backend)
        *xs, v = x.split(self.d_model, dim=1)
        k = self.long_filters(L)
        D = self.filter_fn.bias.reshape(self.order - 1, self.d_model)
        causal = not self.bidirectional
        v = self.dropout(v * xs[-1])
        for o in range(self.order - 1):
            gate = xs[self.order - 2 - o]  # x_{N-2}, ..., x_0
            v = fft_conv(v, k[o], D[o], gate=gate, causal=causal, backend=self.fft_backend)
            if o < self.order - 2:
                v = self.dropout(v)
        return self.out_proj(v.transpose(1, 2))
