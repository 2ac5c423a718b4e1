"""omicskern: fast tokenizers, kernels and models for genomic and single-cell foundation models.

``import omicskern`` is cheap: subpackages (``omicskern.tokenizers``, ``omicskern.ops``,
``omicskern.modules``, ``omicskern.models``, ``omicskern.pipelines``, ``omicskern.io``) load on
first use. ``omicskern.load(folder)`` loads a checkpoint folder of any registered model type;
``model.get_tokenizer()`` gives its tokenizer; ``model.embed(tok.encode_batch(seqs, padding=False))``
embeds.
"""

from __future__ import annotations

from omicskern._lazy import lazy_names

__version__ = "0.1.0"

_SUBMODULES = ("batch", "tokenizers", "ops", "modules", "models", "pipelines", "io", "errors")
_LAZY = {
    "load": "omicskern.models.registry",  # omicskern.load(folder): the model of any registered type
    "accelerate": "omicskern.models.hf",  # patch a transformers model in place
    "Batch": "omicskern.batch",
}

__getattr__, __dir__, _public = lazy_names(__name__, _LAZY, _SUBMODULES)
__all__ = ["__version__", *_public]
