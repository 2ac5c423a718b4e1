"""Package surface: ``dir()`` lists the public names, each resolves, and ``import omicskern`` is cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["omicskern", "omicskern.tokenizers", "omicskern.io", "omicskern.modules", "omicskern.models",
            "omicskern.pipelines", "omicskern.ops"]


@pytest.mark.parametrize("name", PACKAGES)
def test_dir_lists_public_names_that_resolve(name):
    mod = importlib.import_module(name)
    public = [n for n in dir(mod) if not n.startswith("_")]
    assert public and set(public) <= set(mod.__all__)
    assert set(mod.__all__) - {"__version__"} <= set(dir(mod))
    for n in public:
        getattr(mod, n)


def test_import_is_cheap():
    code = "import sys, omicskern; print(sorted(m for m in ('torch', 'triton', 'anndata', 'omicskern._C') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_batch_needs_numpy_only():
    code = ("import sys; import omicskern.batch as b; x = b.Batch.from_rows([[1, 2], [3]]).to_padded(0); "
            "print(sorted(m for m in ('torch', 'triton', 'anndata') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
