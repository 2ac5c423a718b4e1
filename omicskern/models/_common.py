"""Pieces shared by the model classes: input checks of the padded form, dtype/device on load."""

from __future__ import annotations

import torch
from torch import nn


def check_ids(input_ids: torch.Tensor, vocab: int, name: str = "input_ids", dims: int = 2,
              cu_seqlens: torch.Tensor | None = None) -> None:
    """Clear errors for wrong shapes, dtypes or out-of-vocabulary ids (instead of an index crash).
    For ragged ``[T]`` ids, ``cu_seqlens`` lets the message name the row and the position in it."""
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
            at = ""
            if cu_seqlens is not None:
                t = where[0]
                row = int(torch.searchsorted(cu_seqlens[1:].long(), torch.tensor(t, device=cu_seqlens.device),
                                             right=True))
                at = f" (row {row}, position {t - int(cu_seqlens[row])})"
            raise ValueError(f"{name}{list(where)} = {int(input_ids[where])}{at} is outside the vocabulary "
                             f"(size {vocab})")


def check_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids shape "
                         f"{tuple(input_ids.shape)}")
    return attention_mask.to(device=input_ids.device).bool()


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64}


def finish_load(model: nn.Module, dtype: torch.dtype | str | None, device) -> nn.Module:
    from omicskern.models.base import check_device

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or a torch.dtype, got {dtype!r}")
        dtype = _DTYPES[dtype]
    check_device(device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device=device)
    return model.eval()


def param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
