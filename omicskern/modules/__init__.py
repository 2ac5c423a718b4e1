"""nn.Module building blocks over omicskern.ops (attention blocks, HyenaOperator, Mamba, ...)."""

from omicskern._lazy import lazy_names

_LAZY = {"HyenaOperator": "omicskern.modules.hyena", "HyenaFilter": "omicskern.modules.hyena",
         "Mamba": "omicskern.modules.mamba", "BiMamba": "omicskern.modules.mamba"}

__getattr__, __dir__, __all__ = lazy_names(__name__, _LAZY)
