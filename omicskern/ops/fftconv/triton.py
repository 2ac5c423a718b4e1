"""Triton kernels for ``fft_conv`` (work in progress: not available yet)."""

from __future__ import annotations


def unsupported_reason(L: int, causal: bool) -> str | None:
    return "the Triton fft_conv kernels are not implemented yet"
