"""Adapter to the flash-attn package (imported lazily; CUDA, fp16/bf16).

flash-attn's ALiBi bias is ``-slope * |i + Lk - Lq - j|``, i.e. ``-slope * |i - j|`` for
self-attention: the same convention as omicskern. GQA is native (query head ``h`` uses kv head
``h // (H // Hk)``). Head dims that are not a multiple of 8 are zero-padded (zeros add nothing to
``q . k`` and the softmax scale is passed explicitly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from omicskern.errors import BackendUnavailableError
from omicskern.ops.packing import unpad_right_padded


def _flash():
    try:
        import flash_attn
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError("attention: backend 'flash_attn' needs the flash-attn package "
                                      "(pip install omicskern[flash])") from e
    return flash_attn


def attention_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    alibi_slopes: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                    max_seqlen: int | None = None, key_padding_mask: torch.Tensor | None = None,
                    softmax_scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Same contract as :func:`omicskern.ops.attention.attention` (arguments already validated)."""
    fa = _flash()
    D = q.shape[-1]
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    pad = (-D) % 8
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    slopes = None if alibi_slopes is None else alibi_slopes.to(device=q.device, dtype=torch.float32)
    kw = dict(dropout_p=dropout_p, softmax_scale=scale, causal=causal, alibi_slopes=slopes)
    if cu_seqlens is None and key_padding_mask is None:
        out = fa.flash_attn_func(q, k, v, **kw)
    elif cu_seqlens is not None:
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
        out = fa.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kw)
    else:
        B, L, H, Dp = q.shape
        Hk = k.shape[2]
        idx, cu, max_len = unpad_right_padded(key_padding_mask, "flash_attn")
        out_p = fa.flash_attn_varlen_func(q.reshape(B * L, H, Dp)[idx], k.reshape(B * L, Hk, Dp)[idx],
                                          v.reshape(B * L, Hk, Dp)[idx], cu, cu, max_len, max_len, **kw)
        out = out_p.new_zeros(B * L, H, Dp).index_copy(0, idx, out_p).view(B, L, H, Dp)
    return out[..., :D] if pad else out
