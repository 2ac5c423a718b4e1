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


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   alibi_slopes: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                   max_seqlen: int | None = None, key_padding_mask: torch.Tensor | None = None,
                   softmax_scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """The same op through ``torch.nn.functional.scaled_dot_product_attention``.

    ALiBi and the key padding mask become one additive bias tensor ``[B, H, L, L]`` in q's dtype
    (what DNABERT-2 users fall back to); packed inputs are padded to ``max_seqlen`` first.
    """
    if cu_seqlens is not None:
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        L = int(max_seqlen) if max_seqlen is not None else int(lens.max().item()) if lens.numel() else 0
        qp, kmask, idx = _pad(q, cu_seqlens, lens, L)
        kp, _, _ = _pad(k, cu_seqlens, lens, L)
        vp, _, _ = _pad(v, cu_seqlens, lens, L)
        outp = attention_sdpa(qp, kp, vp, causal=causal, alibi_slopes=alibi_slopes,
                              key_padding_mask=kmask, softmax_scale=softmax_scale, dropout_p=dropout_p)
        return outp.reshape(-1, *outp.shape[2:])[idx]
    B, L, H, D = q.shape
    Hk = k.shape[2]
    if Hk != H:
        k = k.repeat_interleave(H // Hk, dim=2)
        v = v.repeat_interleave(H // Hk, dim=2)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = None
    if alibi_slopes is not None or key_padding_mask is not None:
        bias = torch.zeros(1, 1, L, L, device=q.device, dtype=torch.float32)
        if alibi_slopes is not None:
            pos = torch.arange(L, device=q.device)
            dist = (pos[:, None] - pos[None, :]).abs().float()
            bias = bias - alibi_slopes.to(device=q.device, dtype=torch.float32)[None, :, None, None] * dist
        bias = bias.masked_fill(_masked_out(L, causal, key_padding_mask, q.device), float("-inf")).to(q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=bias, dropout_p=dropout_p,
        is_causal=bool(causal and bias is None), scale=softmax_scale)
    out = out.transpose(1, 2)
    if key_padding_mask is not None:
        out = out.masked_fill(~key_padding_mask[:, :, None, None], 0.0)
    return out


def _pad(x: torch.Tensor, cu_seqlens: torch.Tensor, lens: torch.Tensor, L: int):
    """[T, ...] packed -> [N, L, ...] right-padded with zeros, the key mask, and the flat row index."""
    N = lens.numel()
    pos = torch.arange(L, device=x.device)
    mask = pos[None, :] < lens.to(x.device)[:, None]
    idx = (torch.arange(N, device=x.device)[:, None] * L + pos[None, :])[mask]
    out = x.new_zeros(N * L, *x.shape[1:])
    out = out.index_copy(0, idx, x)
    return out.reshape(N, L, *x.shape[1:]), mask, idx


def is_right_padded(key_padding_mask: torch.Tensor) -> bool:
    """Every row is True...True then False...False (one device sync)."""
    L = key_padding_mask.shape[1]
    lens = key_padding_mask.sum(dim=1)
    return torch.equal(key_padding_mask, torch.arange(L, device=key_padding_mask.device)[None, :] < lens[:, None])


def unpad_right_padded(key_padding_mask: torch.Tensor, backend: str):
    """Row index of real tokens in the flattened ``[B * L]`` batch, ``cu_seqlens`` and max length.

    Only right padding keeps every token's position (hence its ALiBi/causal distances) when the
    batch is packed, so other masks raise.
    """
    B, L = key_padding_mask.shape
    lens = key_padding_mask.sum(dim=1, dtype=torch.int32)
    pos = torch.arange(L, device=key_padding_mask.device)
    prefix = pos[None, :] < lens[:, None]
    if not torch.equal(key_padding_mask, prefix):
        bad = int((key_padding_mask != prefix).any(dim=1).nonzero()[0, 0].item())
        raise ValueError(f"attention(backend={backend!r}): key_padding_mask row {bad} is not right "
                         "padding (True then False); positions would shift when unpadded. Use "
                         "backend='sdpa' or 'reference' for arbitrary masks.")
    cu = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
    idx = key_padding_mask.reshape(-1).nonzero().squeeze(1)
    max_len = int(lens.max().item()) if B > 0 else 0
    return idx, cu, max_len
