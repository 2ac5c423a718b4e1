"""Rotary position embeddings (half-split NeoX/ESM/NT-v2 and interleaved GPT-J conventions)."""

from omicskern.ops.rotary.interface import apply_rotary, choose_backend
from omicskern.ops.rotary.reference import apply_rotary_ref, rotary_cos_sin

# ``omicskern.ops.rotary`` resolves (lazily, via omicskern.ops) to this callable.
rotary = apply_rotary

__all__ = ["apply_rotary", "apply_rotary_ref", "rotary_cos_sin", "rotary", "choose_backend"]
