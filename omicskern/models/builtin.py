"""Models shipped inside the package: ``omicskern.load("builtin")`` needs no download.

``hyenadna-omk-tiny`` is a small trained HyenaDNA causal LM (d_model 128, 2 layers, 1024-base
windows), trained by :mod:`omicskern.pipelines.train_builtin` on E. coli K-12 (without its last
10%) and P. falciparum; see ``docs/builtin_model.md`` and the folder's ``README.md``. It is the
default model of the README's main job and of zero-shot scoring examples; it is a small model for
demonstrations and tests, not a replacement for released checkpoints.

Example:
    >>> import omicskern
    >>> model = omicskern.load("builtin")                      # = "builtin:hyenadna-omk-tiny"
    >>> model.kind, model.max_length
    ('causal_lm', 1026)
    >>> builtin_path().name
    'hyenadna-omk-tiny'
"""

from __future__ import annotations

from pathlib import Path

from omicskern.errors import CheckpointError

_ROOT = Path(__file__).resolve().parents[1] / "data" / "models"

# name -> one-line description; the folder is omicskern/data/models/<name>/
BUILTIN: dict[str, str] = {
    "hyenadna-omk-tiny": "HyenaDNA causal LM, d_model 128, 2 layers, l_max 1026 (436k parameters), "
                         "trained on E. coli K-12 (first 90%) + P. falciparum 3D7 by omicskern.pipelines.train_builtin",
}
DEFAULT = "hyenadna-omk-tiny"
PREFIX = "builtin"


def builtin_path(name: str = DEFAULT) -> Path:
    """The folder of built-in model ``name`` (``config.json`` + ``model.safetensors``)."""
    if name not in BUILTIN:
        raise CheckpointError(f"no built-in model {name!r}; built-in models: {', '.join(BUILTIN)}")
    folder = _ROOT / name
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"built-in model {name!r}: {folder} is missing from this installation "
                              "(package data not installed?)")
    return folder


def resolve(path) -> Path | None:
    """``"builtin"`` / ``"builtin:NAME"`` -> the folder; anything else -> None (a path)."""
    if not isinstance(path, str):
        return None
    if path == PREFIX:
        return builtin_path(DEFAULT)
    if path.startswith(PREFIX + ":"):
        return builtin_path(path[len(PREFIX) + 1:])
    return None


__all__ = ["BUILTIN", "DEFAULT", "builtin_path", "resolve"]
