"""Loads the C++ core ``omicskern._C`` on first use, with a clear message when it is not built."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def load_C() -> ModuleType:
    try:
        from omicskern import _C
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "omicskern's C++ core (omicskern._C) is not built. Install the package with "
            "'pip install -e .' (needs a C++17 compiler and pybind11); from a source checkout, "
            "'python setup.py build_ext --inplace' rebuilds it.") from e
    return _C
