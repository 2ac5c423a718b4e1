"""Packing padded batches into token streams and back (the varlen layout of the attention op).

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


def cu_seqlens_from_offsets(offsets: torch.Tensor | list) -> tuple[torch.Tensor, int]:
    """Ragged CSR offsets ``[N+1]`` (e.g. a tokenizer's output) -> (int32 cu_seqlens, max_seqlen).

    Offsets must start at 0 and never decrease; empty rows are allowed.
    """
    off = torch.as_tensor(offsets)
    if off.dim() != 1 or off.numel() < 1:
        raise ValueError(f"offsets must be 1-D with N+1 entries, got shape {tuple(off.shape)}")
    if int(off[0]) != 0:
        raise ValueError(f"offsets must start at 0, got {int(off[0])}")
    d = off[1:] - off[:-1]
    if d.numel() and int(d.min()) < 0:
        i = int(torch.nonzero(d < 0)[0])
        raise ValueError(f"offsets must not decrease: offsets[{i}]={int(off[i])} > offsets[{i + 1}]={int(off[i + 1])}")
    return off.to(torch.int32), int(d.max()) if d.numel() else 0


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


def segment_mean(x: torch.Tensor, cu_seqlens: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x: [T, C]`` over each row -> ``[N, C]``, accumulated in fp32.

    ``weights: [T]`` (0/1) restricts the mean to selected tokens; a row with no selected token
    gives NaN (there is no mean of nothing, and 0 would be silently wrong).
    """
    t = x.shape[0]
    n = cu_seqlens.numel() - 1
    rid = row_ids(cu_seqlens, t)
    w = torch.ones(t, device=x.device, dtype=torch.float32) if weights is None else weights.float()
    s = torch.zeros(n, x.shape[1], device=x.device, dtype=torch.float32)
    s.index_add_(0, rid, x.float() * w[:, None])
    cnt = torch.zeros(n, device=x.device, dtype=torch.float32).index_add_(0, rid, w)
    return (s / cnt[:, None]).to(x.dtype)
