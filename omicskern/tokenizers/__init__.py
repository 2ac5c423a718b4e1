"""Tokenizers: DNA (char, k-mer, BPE) and single cell (rank value, binned value), over the C++ core.

Names load lazily, so ``import omicskern.tokenizers`` does not build or load anything heavy.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Batch": "omicskern.batch",
    "PaddedBatch": "omicskern.batch",
    "SequenceTokenizer": "omicskern.tokenizers.base",
    "reverse_complement": "omicskern.tokenizers.base",
    "CharTokenizer": "omicskern.tokenizers.char",
    "KmerTokenizer": "omicskern.tokenizers.kmer",
    "BPETokenizer": "omicskern.tokenizers.bpe",
    "RankValueTokenizer": "omicskern.tokenizers.rank_value",
    "BinnedValueTokenizer": "omicskern.tokenizers.binned_value",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omicskern.tokenizers' has no attribute {name!r}")


__all__ = list(_LAZY)


def __dir__() -> list[str]:  # the public names only
    return sorted(__all__)
