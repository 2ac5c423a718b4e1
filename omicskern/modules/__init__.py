"""nn.Module building blocks over omicskern.ops (attention blocks, HyenaOperator, ...)."""

import importlib as _importlib

_LAZY = {"HyenaOperator": "omicskern.modules.hyena", "HyenaFilter": "omicskern.modules.hyena"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omicskern.modules' has no attribute {name!r}")


__all__ = list(_LAZY)


def __dir__() -> list[str]:  # the public names only
    return sorted(__all__)
