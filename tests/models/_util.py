"""Helpers shared by the model tests."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import torch


def backends_on_cpu(op: str) -> list[str]:
    """Every backend of ``omicskern.ops.<op>`` that can run on CPU here (Triton via the interpreter,
    which tests/conftest.py turns on, when triton is installed), so model parity tests exercise
    all of them."""
    from omicskern.ops import backends

    table = importlib.import_module(f"omicskern.ops.{op}.interface").BACKENDS
    out = []
    for name, be in table.items():
        if be.requires == "triton" and backends.triton_probe("cpu") is not None:
            continue
        if be.requires not in (None, "triton"):  # flash_attn and other CUDA-only packages
            continue
        out.append(name)
    return out


def save_safetensors(sd: dict, folder: Path, config_from: Path | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    if config_from is not None:
        shutil.copy(Path(config_from) / "config.json", folder / "config.json")
    return folder


def fixture_arrays(folder: Path) -> tuple:
    """(inputs.npz, outputs.npz) of a reference fixture folder."""
    import numpy as np

    folder = Path(folder)
    return np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")


def fixture_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``folder/model.safetensors`` (a reference fixture's weights)."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if not isinstance(x, torch.Tensor) else x
