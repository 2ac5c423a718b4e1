"""omicskern: fast tokenizers, kernels and models for genomic and single-cell foundation models.

``import omicskern`` is cheap: subpackages (``omicskern.tokenizers``, ``omicskern.ops``,
``omicskern.modules``, ``omicskern.models``, ``omicskern.pipelines``, ``omicskern.io``) load on
first use. ``omicskern.load(folder)`` loads a checkpoint folder of any registered model type;
``model.get_tokenizer()`` gives its tokenizer; ``model.embed(tok.encode_batch(seqs, padding=False))``
embeds.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("batch", "tokenizers", "ops", "modules", "models", "pipelines", "io", "errors")
# top-level functions: name -> (module, attribute)
_FUNCTIONS = {
    "load": ("omicskern.models.registry", "load"),  # omicskern.load(folder): model of any registered type
    "accelerate": ("omicskern.models.hf", "accelerate"),  # patch a transformers model in place
    "Batch": ("omicskern.batch", "Batch"),
}


def __getattr__(name: str):
    if name in _FUNCTIONS:
        mod, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"omicskern.{name}")
    raise AttributeError(f"module 'omicskern' has no attribute {name!r}")


__all__ = ["__version__", *_FUNCTIONS, *_SUBMODULES]


def __dir__() -> list[str]:  # the public names only
    return sorted(__all__)
