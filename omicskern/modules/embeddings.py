"""Token embeddings with the released checkpoints' parameter names, run on packed tokens.

ids: int64 ``[T]`` (packed) or any shape -> ``[..., C]``.
"""

from __future__ import annotations

import torch
from torch import nn


class BertEmbeddings(nn.Module):
    """``LayerNorm(word[ids] + token_type[tt] (+ position[pos]))``: transformers' BERT
    (``position=True``, Geneformer) and DNABERT-2 (``position=False``: ALiBi replaces positions)."""

    def __init__(self, vocab: int, hidden: int, type_vocab: int = 2, max_positions: int = 512,
                 position: bool = True, eps: float = 1e-12, padding_idx: int | None = None):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=padding_idx)
        if position:
            self.position_embeddings = nn.Embedding(max_positions, hidden)
        else:
            self.position_embeddings = None
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            if positions is None:
                raise ValueError("positions are required by an embedding with learned positions")
            n = self.position_embeddings.num_embeddings
            if positions.numel() and int(positions.max()) >= n:
                raise ValueError(f"position {int(positions.max())} is past max_position_embeddings={n}")
            x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class EsmEmbeddings(nn.Module):
    """ESM / Nucleotide Transformer embeddings: ``word[ids]`` (+ learned ``position[pos]`` for v1),
    optional ``layer_norm`` (``emb_layer_norm_before``), and ESM's token dropout rescaling
    (``token_dropout``: ``<mask>`` rows zeroed, the rest scaled by ``0.88 / (1 - mask ratio)`` per
    sequence)."""

    def __init__(self, vocab: int, hidden: int, max_positions: int = 1026, absolute: bool = True,
                 layer_norm: bool = False, eps: float = 1e-12, padding_idx: int | None = 1,
                 token_dropout: bool = False, mask_token_id: int | None = None):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=padding_idx)
        self.position_embeddings = (nn.Embedding(max_positions, hidden, padding_idx=padding_idx)
                                    if absolute else None)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps) if layer_norm else None
        self.token_dropout = token_dropout
        self.mask_token_id = mask_token_id

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                row: torch.Tensor | None = None, n_rows: int | None = None) -> torch.Tensor:
        """ids, positions, row: ``[T]`` packed (``row`` = sequence of each token, for token dropout)."""
        x = self.word_embeddings(ids)
        if self.token_dropout and self.mask_token_id is not None:
            is_mask = ids == self.mask_token_id
            x = x.masked_fill(is_mask[:, None], 0.0)
            cnt = torch.zeros(n_rows, device=ids.device, dtype=torch.float32)
            cnt.index_add_(0, row, is_mask.float())
            lens = torch.bincount(row, minlength=n_rows).float()
            ratio = cnt / lens
            x = (x * (1 - 0.15 * 0.8) / (1 - ratio)[row][:, None]).to(x.dtype)
        if self.position_embeddings is not None:
            n = self.position_embeddings.num_embeddings
            if positions.numel() and int(positions.max()) >= n:
                raise ValueError(f"position {int(positions.max())} is past max_position_embeddings={n} "
                                 "(sequence too long for this model)")
            x = x + self.position_embeddings(positions)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x
