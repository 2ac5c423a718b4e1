"""omicskern: fast tokenizers, kernels and models for genomic and single-cell foundation models.

``import omicskern`` is cheap: subpackages (``omicskern.tokenizers``, ``omicskern.ops``,
``omicskern.modules``, ``omicskern.models``, ``omicskern.pipelines``) load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("tokenizers", "ops", "modules", "models", "pipelines", "errors")


def __getattr__(name: str):
    if name == "accelerate":  # omicskern.accelerate(model): drop-in patching of transformers models
        return importlib.import_module("omicskern.models.accelerate").accelerate
    if name in _SUBMODULES:
        return importlib.import_module(f"omicskern.{name}")
    raise AttributeError(f"module 'omicskern' has no attribute {name!r}")


__all__ = ["__version__", "accelerate", *_SUBMODULES]
