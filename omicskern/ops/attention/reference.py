"""Plain-PyTorch definition of :func:`omicskern.ops.attention.attention`.

Reading this file is enough to know what every backend computes:

    out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, g(h)] + bias[h, i, j]) v[b, j, g(h)]

with ``g(h) = h // (H // Hk)`` (grouped-query heads), ``bias = -slope[h] * |i - j|`` (ALiBi, positions
counted from the start of each sequence), keys ``j > i`` dropped when causal, keys where
``key_padding_mask`` is False dropped, and output rows of padded queries set to 0.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes exactly as DNABERT-2 (and the ALiBi paper) compute them, for any head count.

    For ``n`` a power of two: ``slope_h = (2**(-8/n)) ** (h + 1)``. Otherwise, with ``p`` the largest
    power of two below ``n``: the ``p`` slopes of ``p`` heads, then every other slope of ``2p`` heads,
    first ``n - p`` of them (not sorted). Returned as float32 ``[n_heads]`` on the CPU.

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be a positive int, got {n_heads!r}")
    return torch.tensor(_alibi_slopes_list(n_heads), dtype=torch.float32)


def _alibi_slopes_list(n: int) -> list[float]:
    # Same float operations, in the same order, as DNABERT-2's _get_alibi_head_slopes, so the fp32
    # values agree bit for bit.
    def power_of_2(m: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        ratio = start
        return [start * ratio**i for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    p = 2 ** math.floor(math.log2(n))
    return power_of_2(p) + _alibi_slopes_list(2 * p)[0::2][: n - p]


def _masked_out(L: int, causal: bool, kmask: torch.Tensor | None, device) -> torch.Tensor:
    """[1 or B, 1, L, L] bool, True where query i may not see key j (causal, key padding)."""
    drop = torch.zeros(1, 1, L, L, dtype=torch.bool, device=device)
    if causal:
        drop = drop | torch.ones(L, L, dtype=torch.bool, device=device).triu(1)
    if kmask is not None:
        drop = drop | ~kmask[:, None, None, :]
    # A row with no valid key at all (a sequence of length 0) would give NaN in forward and backward;
    # it is a padded query, zeroed by the callers, so let it attend anywhere.
    return drop & ~drop.all(dim=-1, keepdim=True)


def _attend_one(q, k, v, *, causal, slopes, kmask, scale, dropout_p):
    """q: [B, L, H, D], k/v: [B, L, H, D] (heads already expanded), compute dtype. -> [B, L, H, D]."""
    L = q.shape[1]
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if slopes is not None:
        pos = torch.arange(L, device=q.device)
        dist = (pos[:, None] - pos[None, :]).abs().to(s.dtype)
        s = s - slopes.to(device=q.device, dtype=s.dtype)[:, None, None] * dist
    s = s.masked_fill(_masked_out(L, causal, kmask, q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)
    if dropout_p > 0.0:
        p = torch.nn.functional.dropout(p, p=dropout_p)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  alibi_slopes: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                  key_padding_mask: torch.Tensor | None = None, softmax_scale: float | None = None,
                  dropout_p: float = 0.0, upcast: bool = True) -> torch.Tensor:
    """Attention in plain PyTorch, computed in float32 (float64 when the inputs are float64).

    ``q: [B, L, H, D]``, ``k, v: [B, L, Hk, D]`` (``H % Hk == 0``), or packed ``[T, H, D]`` with
    ``cu_seqlens: int32 [N + 1]``. ``upcast=False`` computes in the input dtype instead (the "plain
    PyTorch path in dtype X" the tests compare error against). Returns q's shape and dtype.
    Inputs are assumed valid (the public :func:`attention` validates them).
    """
    out_dtype = q.dtype
    cdt = (torch.float64 if q.dtype == torch.float64 else torch.float32) if upcast else q.dtype
    D = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    H, Hk = q.shape[-2], k.shape[-2]
    if Hk != H:
        k = k.repeat_interleave(H // Hk, dim=-2)
        v = v.repeat_interleave(H // Hk, dim=-2)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    slopes = None if alibi_slopes is None else alibi_slopes.to(device=q.device, dtype=cdt)
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        outs = [_attend_one(q[None, s:e], k[None, s:e], v[None, s:e], causal=causal, slopes=slopes,
                            kmask=None, scale=scale, dropout_p=dropout_p)[0]
                for s, e in zip(bounds[:-1], bounds[1:])]
        out = torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)
        return out.to(out_dtype)
    out = _attend_one(q, k, v, causal=causal, slopes=slopes, kmask=key_padding_mask, scale=scale,
                      dropout_p=dropout_p)
    if key_padding_mask is not None:
        out = out.masked_fill(~key_padding_mask[:, :, None, None], 0.0)
    return out.to(out_dtype)
