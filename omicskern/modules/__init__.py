"""nn.Module building blocks over omicskern.ops (attention blocks, HyenaOperator, ...)."""

from omicskern._lazy import lazy_names

_LAZY = {"HyenaOperator": "omicskern.modules.hyena", "HyenaFilter": "omicskern.modules.hyena"}

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
