"""GPU kernels (Triton, FlashAttention where installed) with plain-PyTorch references.

Names: every public name of ``omicskern.ops`` is a submodule, always the same object::

    omicskern.ops.attention   attention(), alibi_slopes(), attention_ref()
    omicskern.ops.fftconv     fft_conv(), fft_conv_ref(), fast_fft_len()
    omicskern.ops.conv1d      causal_conv1d(), causal_conv1d_ref()
    omicskern.ops.rotary      apply_rotary(), rotary_cos_sin(), apply_rotary_ref()
    omicskern.ops.selective_scan  selective_scan(), selective_state_update(), selective_scan_ref()
    omicskern.ops.rmsnorm     rms_norm(), rms_norm_ref()
    omicskern.ops.backends    backend probes and the dispatch rule

Functions are imported from their op's submodule (``from omicskern.ops.attention import
attention``); ``omicskern.ops`` itself exposes no functions, so a name never changes meaning
when a submodule is imported. Submodules load lazily on first access.

Each op folder has the same shape: ``interface.py`` (the public function, argument checks, the
``BACKENDS`` registry, ``choose_backend`` and dispatch), one file per backend named after it
(``triton.py``, ``torch.py``, ``sdpa.py``, ``flash.py``), and ``reference.py`` (the plain
definition, the math every backend is tested against). A backend's autograd lives with it (the
Triton backends are custom ops whose autograd is registered in ``triton.py``; fft_conv's torch
backend has its own ``autograd.Function`` in ``torch.py``). ``triton`` and ``flash-attn`` are
optional: their backend files are imported only when chosen, so every op imports and runs on
CPU without them (a named backend that cannot run raises
:class:`~omicskern.errors.BackendUnavailableError` with the install hint).
"""

from __future__ import annotations

from omicskern._lazy import lazy_names

# importing a submodule sets the attribute on this package, so later lookups bypass __getattr__
# and see the same module object
__getattr__, __dir__, __all__ = lazy_names(__name__, {}, ("attention", "backends", "conv1d", "fftconv", "rmsnorm", "rotary",
                                                           "selective_scan"))
