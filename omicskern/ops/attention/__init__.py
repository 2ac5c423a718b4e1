"""Attention with ALiBi, causal masks, grouped-query heads and variable-length (packed) batches.

``attention(q, k, v, ...)`` dispatches to flash-attn, omicskern's Triton kernels, PyTorch SDPA or a
plain-PyTorch reference; ``alibi_slopes(n_heads)`` gives DNABERT-2's ALiBi slopes.
"""

from omicskern.ops.attention.interface import BACKENDS, attention, choose_backend
from omicskern.ops.attention.reference import alibi_slopes, attention_ref

__all__ = ["attention", "alibi_slopes", "attention_ref", "choose_backend", "BACKENDS"]
