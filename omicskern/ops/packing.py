"""The one pad/unpad implementation on tensors: padded batches <-> packed token streams.

(The numpy side is :meth:`omicskern.batch.Batch.to_padded` / :meth:`~omicskern.batch.PaddedBatch.to_ragged`.)

A padded batch ``[B, L, ...]`` with a 0/1 ``attention_mask`` becomes ``[T, ...]`` (T = number of
real tokens) plus ``cu_seqlens`` (int32 ``[B+1]``, row starts) -- the layout
``omicskern.ops.attention.attention`` takes for variable-length batches -- so no FLOP is spent
on padding and no ``[B, H, L, L]`` mask or bias is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where the real tokens of a padded ``[B, L]`` batch live.

    indices: int64 ``[T]`` flat indices into ``B*L`` of the real tokens, row-major.
    cu_seqlens: int32 ``[B+1]`` start of each row in the packed stream.
    max_seqlen: longest row.
    batch, seqlen: the padded shape.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    seqlen: int

    @property
    def lengths(self) -> torch.Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    def columns(self) -> torch.Tensor:
        """int64 ``[T]``: each packed token's column in the padded batch (its padded position)."""
        return self.indices % self.seqlen

    def rows(self) -> torch.Tensor:
        """int64 ``[T]``: each packed token's row."""
        return torch.div(self.indices, self.seqlen, rounding_mode="floor")

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[T, ...]``."""
        return x.reshape(self.batch * self.seqlen, *x.shape[2:])[self.indices]

    def unpack(self, x: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, L, ...]``; padded positions get ``fill`` (a scalar or a ``[...]`` row)."""
        out = x.new_empty(self.batch * self.seqlen, *x.shape[1:])
        out[:] = fill
        out[self.indices] = x
        return out.view(self.batch, self.seqlen, *x.shape[1:])


def packing_from_mask(attention_mask: torch.Tensor) -> Packing:
    """Packing of a ``[B, L]`` mask (nonzero = real token). Real tokens need not be contiguous."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, L], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    b, l = mask.shape
    lengths = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu = torch.zeros(b + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = torch.cumsum(lengths, dim=0)
    max_seqlen = int(lengths.max().item()) if b else 0
    return Packing(indices, cu, max_seqlen, b, l)


def full_packing(batch: int, seqlen: int, device: torch.device | str = "cpu") -> Packing:
    """Packing of an unpadded ``[B, L]`` batch."""
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
    return Packing(torch.arange(batch * seqlen, device=device), cu, seqlen, batch, seqlen)


def positions_in_rows(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """int64 ``[T]``: index of each packed token inside its own row (0..len-1)."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu.device) - starts


def row_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """int64 ``[T]``: row of each packed token."""
    cu = cu_seqlens.long()
    return torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), cu[1:] - cu[:-1],
                                   output_size=total)


def pad_packed(x: torch.Tensor, cu_seqlens: torch.Tensor, length: int | None = None, fill: float = 0.0):
    """``[T, ...]`` packed rows -> (``[N, L, ...]`` right-padded with ``fill``, bool mask ``[N, L]``,
    int64 flat indices ``[T]`` into ``N * L``). ``L`` defaults to the longest row."""
    cu = cu_seqlens.long()
    lens = cu[1:] - cu[:-1]
    n = lens.numel()
    L = (int(lens.max()) if n else 0) if length is None else int(length)
    pos = torch.arange(L, device=x.device)
    mask = pos[None, :] < lens.to(x.device)[:, None]
    idx = (torch.arange(n, device=x.device)[:, None] * L + pos[None, :])[mask]
    out = x.new_full((n * L, *x.shape[1:]), fill)
    out = out.index_copy(0, idx, x)
    return out.reshape(n, L, *x.shape[1:]), mask, idx


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
