"""Pipelines: whole jobs over files (tokenize a genome, tokenize cells; later: embed them).

A pipeline owns the job mechanics: work units split by rank (:mod:`~omicskern.pipelines.units`),
job keys on the input's content, manifests, atomic shard writes and resume
(:mod:`~omicskern.pipelines.jobs`). The CLI only parses arguments and calls a pipeline.

Layering: tokenizers -> ops -> modules -> models -> pipelines -> cli; ``omicskern.io`` beside.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "tokenize_fasta": "omicskern.pipelines.tokenize",
    "tokenize_cells": "omicskern.pipelines.tokenize",
    "TokenizeResult": "omicskern.pipelines.tokenize",
    "JobKey": "omicskern.pipelines.jobs",
    "JobMismatchError": "omicskern.errors",
    "Manifest": "omicskern.pipelines.jobs",
    "ShardedJob": "omicskern.pipelines.jobs",
    "atomic_write": "omicskern.pipelines.jobs",
    "WorkUnit": "omicskern.pipelines.units",
    "split_by_rank": "omicskern.pipelines.units",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omicskern.pipelines' has no attribute {name!r}")


__all__ = list(_LAZY)


def __dir__() -> list[str]:  # the public names only
    return sorted(__all__)
