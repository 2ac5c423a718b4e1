"""Lazy package namespaces: a package lists its public names and the module each comes from, and
gets the ``__getattr__`` / ``__dir__`` / ``__all__`` that load a name on first use."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_names(package: str, names: Mapping[str, str], submodules: tuple[str, ...] = ()
               ) -> tuple[Callable, Callable, list[str]]:
    """``names``: public name -> module that defines it; ``submodules``: subpackages also exposed.

    Example (in a package's ``__init__.py``):
        >>> __getattr__, __dir__, __all__ = lazy_names(__name__, {"Batch": "omicskern.batch"})
    """
    public = [*names, *submodules]

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # the public names only
        return sorted(public)

    return __getattr__, __dir__, public
