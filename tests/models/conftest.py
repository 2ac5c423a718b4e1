"""Fixtures shared by the model tests (helpers that are plain functions live in ``_util.py``)."""

from __future__ import annotations

import pytest

from tests.models._util import fixture_arrays


@pytest.fixture(scope="module")
def fix(request, shared_dir):
    """(folder, inputs.npz, outputs.npz) of the reference fixture named by the test module's
    ``FIX`` (a path below /work/shared, e.g. ``"fixtures/dnabert2_tiny"``); skips without it."""
    name = getattr(request.module, "FIX", None)
    if name is None:
        raise RuntimeError(f"{request.module.__name__} uses the `fix` fixture but defines no FIX")
    d = shared_dir / name
    return (d, *fixture_arrays(d))
