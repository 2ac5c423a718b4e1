"""Right-padded <-> packed (varlen) layout helpers shared by the attention interface and backends."""

from __future__ import annotations

import torch


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
