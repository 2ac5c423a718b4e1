"""Model classes that load released checkpoints, built from omicskern.modules, behind one interface.

Every class (``DNABERT2``, ``NucleotideTransformer``, ``HyenaDNA``, ``Geneformer``, ``ScGPT``, ``Caduceus``) is an
:class:`~omicskern.models.base.OmicsModel`: ``from_pretrained(folder)``, ``forward(batch)``,
``embed(batch, pooling=, layer=)``, ``token_logits``, ``set_backend(**ops)`` and
``get_tokenizer()``. :func:`load` detects a folder's type from the :data:`REGISTRY`;
``accelerate(model)`` patches a ``transformers`` model in place and ``from_hf(model)`` converts
one. Names load lazily.
"""

from __future__ import annotations

from omicskern._lazy import lazy_names

_LAZY = {
    "OmicsModel": "omicskern.models.base",
    "ModelOutput": "omicskern.models.base",
    "EmbedOutput": "omicskern.models.base",
    "POOLINGS": "omicskern.models.base",
    "REGISTRY": "omicskern.models.registry",
    "load": "omicskern.models.registry",
    "detect": "omicskern.models.registry",
    "BUILTIN": "omicskern.models.builtin",
    "builtin_path": "omicskern.models.builtin",
    "DNABERT2": "omicskern.models.dnabert2",
    "DNABERT2Config": "omicskern.models.dnabert2",
    "HyenaDNA": "omicskern.models.hyenadna",
    "HyenaDNAConfig": "omicskern.models.hyenadna",
    "NucleotideTransformer": "omicskern.models.nucleotide_transformer",
    "NucleotideTransformerConfig": "omicskern.models.nucleotide_transformer",
    "Geneformer": "omicskern.models.geneformer",
    "GeneformerConfig": "omicskern.models.geneformer",
    "ScGPT": "omicskern.models.scgpt",
    "ScGPTConfig": "omicskern.models.scgpt",
    "Caduceus": "omicskern.models.caduceus",
    "CaduceusConfig": "omicskern.models.caduceus",
    "accelerate": "omicskern.models.hf",
    "from_hf": "omicskern.models.hf",
    "restore": "omicskern.models.hf",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
