"""Triton kernels for ``causal_conv1d`` (work in progress: not available yet)."""

from __future__ import annotations


def unsupported_reason(K: int) -> str | None:
    return "the Triton causal_conv1d kernels are not implemented yet"
