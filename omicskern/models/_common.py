"""Pieces shared by the model classes: output container, input checks, dtype/device on load."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What ``forward`` returns. Unused fields are ``None``.

    last_hidden_state: ``[B, L, C]`` (padded positions as the reference gives them, see each model).
    pooler_output: ``[B, C]`` where the model has a pooler.
    logits: ``[B, L, V]`` (LM head) or ``[B, n_classes]`` (sequence classification head).
    hidden_states: per-layer outputs when asked for.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None

    def __getitem__(self, i):  # tuple-style access like transformers outputs: out[0]
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None][i]


def check_ids(input_ids: torch.Tensor, vocab: int, name: str = "input_ids", dims: int = 2) -> None:
    """Clear errors for wrong shapes, dtypes or out-of-vocabulary ids (instead of an index crash)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != dims:
        shape = "[B, L]" if dims == 2 else "[T]"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids, got {input_ids.dtype}")
    if input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab:
            bad = (input_ids < 0) | (input_ids >= vocab)
            where = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name}{list(where)} = {int(input_ids[where])} is outside the vocabulary "
                             f"(size {vocab})")


def check_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids shape "
                         f"{tuple(input_ids.shape)}")
    return attention_mask.to(device=input_ids.device).bool()


def finish_load(model: nn.Module, dtype: torch.dtype | str | None, device) -> nn.Module:
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[dtype]
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device=device)
    return model.eval()


def param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _ragged_inputs(ids, offsets, device):
    """(ids, offsets) or a tokenizer RaggedBatch -> (ids tensor on ``device``, int32 cu_seqlens, max length)."""
    from omicskern.modules.padding import cu_seqlens_from_offsets

    if offsets is None:
        if not (hasattr(ids, "ids") and hasattr(ids, "offsets")):
            raise TypeError("pass ids and offsets, or a tokenizer RaggedBatch (with .ids and .offsets)")
        ids, offsets = ids.ids, ids.offsets
    ids = torch.as_tensor(ids, device=device)
    cu, max_len = cu_seqlens_from_offsets(offsets)
    cu = cu.to(device)
    if int(cu[-1]) != ids.numel():
        raise ValueError(f"offsets end at {int(cu[-1])} but ids holds {ids.numel()} tokens")
    return ids, cu, max_len
