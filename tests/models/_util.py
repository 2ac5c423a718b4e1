"""Helpers shared by the model tests."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path

import torch


def backends_on_cpu(op: str) -> list[str]:
    """Every backend of ``omicskern.ops.<op>`` that can run on CPU here (Triton via the interpreter,
    which tests/conftest.py turns on), so model parity tests exercise all of them."""
    mod = importlib.import_module(f"omicskern.ops.{op}")
    names = list(getattr(mod, "BACKENDS", None) or importlib.import_module(f"omicskern.ops.{op}.interface").BACKENDS)
    out = []
    for name in names:
        if name in ("flash_attn", "cuda"):
            continue
        if name == "triton" and importlib.util.find_spec(f"omicskern.ops.{op}.triton") is None:
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
