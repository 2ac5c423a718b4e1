"""The ``sdpa`` backend: ``torch.nn.functional.scaled_dot_product_attention`` (any device, plain PyTorch).

ALiBi and the key padding mask become one additive bias; packed (varlen) inputs are padded first.
"""

from __future__ import annotations

import torch

from omicskern.ops.attention.reference import _masked_out
from omicskern.ops.packing import pad_packed


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
        n = lens.numel()
        if n and L > 0 and q.shape[0] == n * L and bool((lens == L).all()):
            # rows of one length (genome windows of char / k-mer tokens): the packed tensor is
            # already [B, L] row-major, so a view replaces padding, masks and the gather back
            outp = attention_sdpa(q.view(n, L, *q.shape[1:]), k.view(n, L, *k.shape[1:]),
                                  v.view(n, L, *v.shape[1:]), causal=causal, alibi_slopes=alibi_slopes,
                                  softmax_scale=softmax_scale, dropout_p=dropout_p)
            return outp.reshape(q.shape[0], *outp.shape[2:])
        qp, kmask, idx = pad_packed(q, cu_seqlens, L)
        kp, _, _ = pad_packed(k, cu_seqlens, L)
        vp, _, _ = pad_packed(v, cu_seqlens, L)
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


