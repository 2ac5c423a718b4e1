"""Loads the C++ core ``omicskern._C`` on first use, with a clear message when it is not built."""

from __future__ import annotations

import functools
import os
from types import ModuleType


@functools.cache
def load_C() -> ModuleType:
    # The core's OpenMP threads sleep at the end of a parallel region instead of spinning: busy
    # waiting steals the core a descheduled sibling needs when the machine runs other work
    # (DataLoader workers, other jobs), which made a 2-thread call ~10x slower than 1 thread.
    # Read once when libgomp initialises (our _C links the system libgomp; torch bundles its own);
    # an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from omicskern import _C
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "omicskern's C++ core (omicskern._C) is not built. Install the package with "
            "'pip install -e .' (needs a C++17 compiler and pybind11); from a source checkout, "
            "'python setup.py build_ext --inplace' rebuilds it.") from e
    return _C
