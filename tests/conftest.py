"""Test setup shared by every test module.

Without a CUDA GPU, Triton kernels run through the interpreter; the variable must be set before
any kernel module is imported, hence here at conftest import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # tokenizer-only environments
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:  # timing belongs in benchmarks: no per-example deadline (the CI machine may be loaded)
    from hypothesis import settings

    settings.register_profile("omicskern", deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "omicskern"))
except ImportError:
    pass

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
# ../shared beside the checkout (developers' machines and CI); tests that need it skip without it.
SHARED_DIR = Path(os.environ.get("OMICSKERN_SHARED", TESTS_DIR.parent.parent / "shared"))


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR
