"""Fixtures of the pipeline tests: a private FASTA-index cache per test, and checkpoint folders
(tiny random weights, the releases' layout) built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMICSKERN_CACHE", str(tmp_path / "cache"))


class _Folders(dict):
    """``folders["hyenadna"]``: the folder of that registered type, built on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        from tests.models import _folders

        self[name] = getattr(_folders, name)(self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    return _Folders(tmp_path_factory.mktemp("model-folders"))
