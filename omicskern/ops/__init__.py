"""GPU kernels (Triton, FlashAttention where installed) with plain-PyTorch references.

Each op lives in its own folder: ``interface.py`` (public function, autograd Function, dispatch),
``triton.py`` (kernels), ``reference.py`` (plain PyTorch). Submodules load lazily.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "attention": "omicskern.ops.attention",
    "rotary": "omicskern.ops.rotary",
    "fft_conv": "omicskern.ops.fftconv",
    "causal_conv1d": "omicskern.ops.conv1d",
}


def __getattr__(name: str):
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return getattr(mod, name)
    raise AttributeError(f"module 'omicskern.ops' has no attribute {name!r}")
