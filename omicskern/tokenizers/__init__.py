"""Tokenizers: DNA (char, k-mer, BPE) and single cell (rank value, binned value), over the C++ core.

Names load lazily, so ``import omicskern.tokenizers`` does not build or load anything heavy.
"""

from __future__ import annotations

from omicskern._lazy import lazy_names

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

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
