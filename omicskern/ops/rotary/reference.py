"""Plain-PyTorch rotary position embeddings (RoPE), both conventions.

With ``R = 2 * cos.shape[-1]`` rotated dims (``R <= D``; dims ``R:`` pass through unchanged):

* half-split (``interleaved=False``; GPT-NeoX, ESM, NT-v2 ``rotate_half``): pairs ``(x[j], x[j + R/2])``;
* interleaved (``interleaved=True``; GPT-J, original RoFormer): pairs ``(x[2j], x[2j + 1])``;

each pair ``(a, b)`` at position ``p`` becomes ``(a cos - b sin, a sin + b cos)`` with
``cos = cos[p, j]``, ``sin = sin[p, j]``.
"""

from __future__ import annotations

import torch


def rotary_cos_sin(seqlen: int, rotary_dim: int, *, base: float = 10000.0,
                   device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[seqlen, rotary_dim // 2]`` for positions ``0..seqlen-1``.

    ``inv_freq[j] = 1 / base ** (2j / rotary_dim)`` and ``angle[p, j] = p * inv_freq[j]``, computed in
    float32 like NT-v2/ESM (then cast to ``dtype``). NT-v2's ``cat(angle, angle)`` tables are these
    tables twice.

    Example:
        >>> cos, sin = rotary_cos_sin(600, 16)   # NT-v2 tiny: head dim 16
        >>> q = apply_rotary(q, cos, sin)         # q: [B, 600, H, 16]
    """
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_cos_sin: rotary_dim must be a positive even int, got {rotary_dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    t = torch.arange(seqlen, dtype=torch.float32)
    angle = torch.outer(t, inv_freq)
    return angle.cos().to(device=device, dtype=dtype), angle.sin().to(device=device, dtype=dtype)


def positions(x_shape, *, cu_seqlens: torch.Tensor | None, seqlen_offset: int | torch.Tensor,
              device) -> torch.Tensor:
    """Position of every row: ``[L]`` (padded; ``[B, L]`` with per-row offsets) or ``[T]`` (packed)."""
    if cu_seqlens is None:
        pos = torch.arange(x_shape[1], device=device)
        if isinstance(seqlen_offset, torch.Tensor):
            return seqlen_offset.to(device).long()[:, None] + pos[None, :]
        return pos + int(seqlen_offset)
    T = x_shape[0]
    starts = cu_seqlens[:-1].long()
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq_of_row = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens, output_size=T)
    pos = torch.arange(T, device=device) - starts[seq_of_row]
    if isinstance(seqlen_offset, torch.Tensor):
        return pos + seqlen_offset.to(device).long()[seq_of_row]
    return pos + int(seqlen_offset)


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False,
                     cu_seqlens: torch.Tensor | None = None,
                     seqlen_offset: int | torch.Tensor = 0, upcast: bool = True) -> torch.Tensor:
    """Rotary embedding in plain PyTorch (float32 math, float64 for float64 inputs).

    ``x: [B, L, H, D]`` or packed ``[T, H, D]`` with ``cu_seqlens``; ``cos, sin: [Lmax, R/2]``.
    Returns x's shape and dtype. Inputs are assumed valid (see :func:`apply_rotary`).
    """
    cdt = (torch.float64 if x.dtype == torch.float64 else torch.float32) if upcast else x.dtype
    pos = positions(x.shape, cu_seqlens=cu_seqlens, seqlen_offset=seqlen_offset, device=x.device)
    c, s = cos.to(cdt)[pos], sin.to(cdt)[pos]          # [..., R/2] aligned with x's row axes
    if cu_seqlens is None and c.dim() == 2:             # [L, R/2] -> broadcast over batch
        c, s = c[None], s[None]
    c, s = c.unsqueeze(-2), s.unsqueeze(-2)             # over heads
    R = 2 * cos.shape[-1]
    xr, xp = x[..., :R].to(cdt), x[..., R:]
    if interleaved:
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    else:
        a, b = xr[..., : R // 2], xr[..., R // 2:]
        out = torch.cat((a * c - b * s, a * s + b * c), dim=-1)
    return torch.cat((out.to(x.dtype), xp), dim=-1)
