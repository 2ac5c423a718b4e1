"""Backend availability probes and the one rule that picks a backend for an op.

Every op (``attention``, ``fft_conv``, ...) calls :func:`choose` with the backends it knows, in
order of preference *for the inputs at hand* (device, dtype), each with a probe. A probe returns
``None`` when the backend can run, else a short reason with an install hint. The rule:

* ``backend`` given explicitly -> used if its probe passes, else :class:`BackendUnavailableError`;
* otherwise ``OMICSKERN_<OP>_BACKEND`` in the environment, treated as an explicit choice;
* otherwise the first backend in the preference order whose probe passes.

Each op also lists its backends in a ``BACKENDS`` registry (``interface.py``): name ->
:class:`Backend`, i.e. the module implementing it (a file named after the backend) and what it
needs. Modules of backends with optional packages (``triton``, ``flash_attn``) are imported only
when that backend is chosen, so every op imports and runs its CPU backends without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from omicskern.errors import BackendUnavailableError

Probe = Callable[[], "str | None"]


@dataclass(frozen=True)
class Backend:
    """One entry of an op's ``BACKENDS`` registry.

    Attributes:
        module: the module implementing the backend (``omicskern.ops.<op>.<file named after it>``).
        function: its entry point in that module.
        requires: the optional package it needs (``"triton"``, ``"flash_attn"``), or None when plain
            PyTorch is enough; such modules are imported only when the backend is chosen.
    """

    module: str
    function: str
    requires: str | None = None

    def load(self) -> Callable:
        """Import the module (the optional package with it) and return the entry point."""
        return getattr(importlib.import_module(self.module), self.function)


# Probed once at import (find_spec does not import the package). Plain module constants rather
# than functools.cache, so torch.compile traces the probes without warnings.
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def has_triton() -> bool:
    return _HAS_TRITON


def triton_interpret() -> bool:
    """True when Triton kernels run on CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def has_flash_attn() -> bool:
    return _HAS_FLASH_ATTN


def triton_probe(device_type: str) -> str | None:
    """Can Triton kernels run on tensors of ``device_type``?"""
    if not has_triton():
        return "the 'triton' package is not installed (pip install triton)"
    if device_type == "cuda":
        return None
    if triton_interpret():
        return None
    return (f"Triton kernels need a CUDA device (inputs are on '{device_type}'); "
            "set TRITON_INTERPRET=1 before importing omicskern to run them on CPU (slow)")


def env_var(op: str) -> str:
    return f"OMICSKERN_{op.upper()}_BACKEND"


def choose(op: str, backend: str | None, probes: Mapping[str, Probe],
           preference: Sequence[str]) -> str:
    """Pick the backend for ``op``.

    Args:
        op: op name, used in messages and in the env var ``OMICSKERN_<OP>_BACKEND``.
        backend: the caller's explicit choice or ``None``.
        probes: every backend the op knows -> probe (``None`` = available, else the reason).
        preference: order to try when nothing is chosen explicitly (best first).
    """
    explicit = backend if backend is not None else (os.environ.get(env_var(op)) or None)
    if explicit is not None:
        if explicit not in probes:
            raise ValueError(f"{op}: unknown backend {explicit!r}; known: {', '.join(probes)}")
        reason = probes[explicit]()
        if reason is not None:
            src = "" if backend is not None else f" (from ${env_var(op)})"
            raise BackendUnavailableError(f"{op}: backend {explicit!r}{src} is not available: {reason}")
        return explicit
    reasons = []
    for name in preference:
        reason = probes[name]()
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailableError(f"{op}: no backend available ({'; '.join(reasons)})")
