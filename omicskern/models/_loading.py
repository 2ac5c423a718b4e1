"""Reading released checkpoints: config.json + model.safetensors / pytorch_model.bin.

Loading is strict: every parameter and persistent buffer of the module must come from the
checkpoint with the right shape, and every checkpoint key must be used, except for keys a model
declares as ignorable (e.g. NT's unused position table) or tied (a decoder weight that HF drops
on save because it aliases the word embedding). Anything else raises :class:`CheckpointError`
naming the keys, so a truncated or mismatched checkpoint never loads silently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from omicskern.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _names(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_config(path: str | Path) -> dict:
    """Parse ``config.json`` in ``path`` (a folder) or ``path`` itself (a .json file)."""
    path = Path(path)
    cfg = path / "config.json" if path.is_dir() else path
    if not cfg.is_file():
        raise CheckpointError(f"no config.json in {path}")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None


def find_weights(path: str | Path, names: Iterable[str] = WEIGHT_FILES) -> Path:
    """The weight file in folder ``path`` (first of ``names`` present), or ``path`` if it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"no weights in {path}: expected one of {', '.join(names)}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, a torch pickle (``.bin``/``.pt``/``.ckpt``, read with
    ``weights_only=True``) or the first weight file of a folder. A Lightning checkpoint's
    ``state_dict`` entry is unwrapped."""
    path = find_weights(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated file, wrong format, ...
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors")
    return dict(obj)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
                ignore: Iterable[str] = (), tied: Mapping[str, str] | None = None,
                optional: Iterable[str] = ()) -> None:
    """Copy ``state_dict`` into ``module``, raising :class:`CheckpointError` on any mismatch.

    Args:
        source: where the tensors came from, for messages (a file name).
        ignore: regexes of checkpoint keys that are known and unused (dropped silently).
        tied: ``{alias: target}``: ``alias`` may be missing when ``target`` is present (same tensor).
        optional: regexes of module keys that keep their initial value when absent (buffers the
            module recomputes, e.g. rotary ``inv_freq``).
    """
    tied = dict(tied or {})
    ign = [re.compile(p) for p in ignore]
    opt = [re.compile(p) for p in optional]
    expected = module.state_dict()
    sd = {_legacy_name(k, expected): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not any(p.fullmatch(k) for p in ign)}
    missing = [k for k in expected if k not in sd
               and not (k in tied and tied[k] in sd)
               and not any(p.fullmatch(k) for p in opt)]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
              for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing in {source}: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in {source}: {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} keys with the wrong shape in {source}: {_names(shapes)}")
    if problems:
        raise CheckpointError("; ".join(problems))
    for alias, target in tied.items():
        if alias in expected and alias not in sd and target in sd:
            sd[alias] = sd[target]
    with torch.no_grad():
        for name, tensor in expected.items():
            if name in sd:
                tensor.copy_(sd[name].to(dtype=tensor.dtype))


def _legacy_name(key: str, expected: Mapping) -> str:
    # Old TF-converted checkpoints (and transformers' save of some models) name LayerNorm
    # parameters gamma/beta; transformers renames them on load, so do we.
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if key.endswith(old) and key not in expected and key[: -len(old)] + new in expected:
            return key[: -len(old)] + new
    return key


def rename_keys(state_dict: Mapping[str, torch.Tensor], fn: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Apply ``fn`` to every key; keys mapped to ``None`` are dropped."""
    out = {}
    for k, v in state_dict.items():
        nk = fn(k)
        if nk is not None:
            out[nk] = v
    return out


def config_get(cfg: Mapping, *names: str, default=None, required: bool = False, where: str = "config.json"):
    """First of ``names`` present in ``cfg``; a missing required field raises naming it."""
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if required:
        raise CheckpointError(f"{where}: missing field {names[0]!r}")
    return default
