"""Model classes that load released checkpoints, built from omicskern.modules.

``DNABERT2``, ``HyenaDNA``, ``NucleotideTransformer``, ``Geneformer`` (each with
``from_pretrained(local_dir)``, ``forward`` and ``embed``), ``accelerate(model)`` that patches a
``transformers`` model in place, and ``from_hf(model)`` that converts one. Loaded lazily.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DNABERT2": "omicskern.models.dnabert2",
    "DNABERT2Config": "omicskern.models.dnabert2",
    "HyenaDNA": "omicskern.models.hyenadna",
    "HyenaDNAConfig": "omicskern.models.hyenadna",
    "NucleotideTransformer": "omicskern.models.nucleotide_transformer",
    "NucleotideTransformerConfig": "omicskern.models.nucleotide_transformer",
    "Geneformer": "omicskern.models.geneformer",
    "GeneformerConfig": "omicskern.models.geneformer",
    "accelerate": "omicskern.models.accelerate",
    "from_hf": "omicskern.models.accelerate",
    "ModelOutput": "omicskern.models._common",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'omicskern.models' has no attribute {name!r}")


__all__ = list(_EXPORTS)
