"""Rotary position embeddings (half-split NeoX/ESM/NT-v2 and interleaved GPT-J conventions)."""

from omicskern.ops.rotary.interface import BACKENDS, apply_rotary, choose_backend
from omicskern.ops.rotary.reference import apply_rotary_ref, rotary_cos_sin

__all__ = ["apply_rotary", "apply_rotary_ref", "rotary_cos_sin", "choose_backend", "BACKENDS"]
