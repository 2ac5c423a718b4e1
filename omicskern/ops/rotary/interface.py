"""Public rotary-embedding op: checks, the ``BACKENDS`` registry, backend choice and dispatch.

Backends (``OMICSKERN_ROTARY_BACKEND``), each in a file named after it: ``triton`` (``triton.py``,
a fused kernel registered as a custom op with its autograd there; CUDA default, CPU via the
interpreter; imported only when chosen) and ``reference`` (``reference.py``, float32 math).
"""

from __future__ import annotations

import torch

from omicskern.ops import backends
from omicskern.ops.rotary.reference import apply_rotary_ref

_PKG = "omicskern.ops.rotary"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "triton": backends.Backend(f"{_PKG}.triton", "apply_rotary_triton", requires="triton"),
    "reference": backends.Backend(f"{_PKG}.reference", "apply_rotary_ref"),
}


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False,
                 cu_seqlens: torch.Tensor | None = None, seqlen_offset: int | torch.Tensor = 0,
                 max_seqlen: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Rotate the first ``R = 2 * cos.shape[-1]`` dims of every head of ``x`` by its position's angles.

    Args:
        x: ``[B, L, H, D]``, or packed ``[T, H, D]`` with ``cu_seqlens: int32 [N + 1]`` (positions
            restart at 0 for every sequence).
        cos, sin: ``[Lmax, R/2]`` with ``R <= D`` even (see :func:`rotary_cos_sin`); rows are positions.
        interleaved: False = half-split pairs ``(j, j + R/2)`` (GPT-NeoX/ESM/NT-v2 ``rotate_half``);
            True = adjacent pairs ``(2j, 2j + 1)`` (GPT-J).
        seqlen_offset: added to every position (int, or ``[B]``/``[N]`` tensor), e.g. for KV caches.
        max_seqlen: longest packed sequence (optional; saves the Triton path a device sync).
        backend: ``"triton" | "reference"`` or None (triton on CUDA, reference on CPU);
            ``OMICSKERN_ROTARY_BACKEND`` overrides None.

    Returns:
        Tensor of x's shape and dtype, differentiable in x (not in cos/sin).

    Example:
        >>> cos, sin = rotary_cos_sin(128, 64)
        >>> q = apply_rotary(torch.randn(2, 128, 8, 64), cos, sin)
    """
    _check(x, cos, sin, cu_seqlens, seqlen_offset, max_seqlen)
    if cu_seqlens is not None and cu_seqlens.dtype != torch.int32:
        cu_seqlens = cu_seqlens.to(torch.int32)
    name = choose_backend(x, backend=backend)
    if name == "reference":
        return apply_rotary_ref(x, cos, sin, interleaved=interleaved, cu_seqlens=cu_seqlens,
                                seqlen_offset=seqlen_offset)
    from omicskern.ops.rotary.triton import apply_rotary_triton

    return apply_rotary_triton(x, cos, sin, interleaved=interleaved, cu_seqlens=cu_seqlens,
                               seqlen_offset=seqlen_offset, max_seqlen=max_seqlen)


def choose_backend(x: torch.Tensor, *, backend: str | None = None) -> str:
    """The backend :func:`apply_rotary` would use for an input like ``x`` (see :func:`apply_rotary`)."""
    dev = x.device.type

    def triton_probe():
        reason = backends.triton_probe(dev)
        if reason is None and x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"the Triton rotary kernel takes float16, bfloat16 or float32 (got {x.dtype})"
        return reason

    probes = {"triton": triton_probe, "reference": lambda: None}
    preference = ["triton", "reference"] if dev == "cuda" else ["reference"]
    return backends.choose("rotary", backend, probes, preference)


def _check(x, cos, sin, cu_seqlens, seqlen_offset, max_seqlen) -> None:
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"apply_rotary: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"apply_rotary: {name} must be floating point, got {t.dtype}")
    want = 3 if cu_seqlens is not None else 4
    if x.dim() != want:
        lay = "[T, H, D] with cu_seqlens" if cu_seqlens is not None else "[B, L, H, D]"
        raise ValueError(f"apply_rotary: x must be {lay}, got shape {tuple(x.shape)}")
    if cos.dim() != 2 or cos.shape != sin.shape:
        raise ValueError(f"apply_rotary: cos and sin must both be [Lmax, R/2]; got {tuple(cos.shape)} "
                         f"and {tuple(sin.shape)}")
    if cos.device != x.device or sin.device != x.device:
        raise ValueError(f"apply_rotary: cos/sin are on {cos.device}/{sin.device}, x on {x.device}")
    R, D = 2 * cos.shape[1], x.shape[-1]
    if R == 0 or R > D:
        raise ValueError(f"apply_rotary: rotary dim 2 * cos.shape[1] = {R} must be in [2, D={D}]")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("apply_rotary: cu_seqlens must be a 1-D int32 tensor [N + 1]")
        if cu_seqlens.device != x.device:
            raise ValueError(f"apply_rotary: cu_seqlens is on {cu_seqlens.device}, x on {x.device}")
    n_rows = x.shape[1] if cu_seqlens is None else None
    if isinstance(seqlen_offset, torch.Tensor):
        n = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        if seqlen_offset.dim() != 1 or seqlen_offset.shape[0] != n:
            raise ValueError(f"apply_rotary: seqlen_offset tensor must have shape [{n}], got "
                             f"{tuple(seqlen_offset.shape)}")
    elif n_rows is not None and int(seqlen_offset) + n_rows > cos.shape[0]:
        raise ValueError(f"apply_rotary: positions up to {int(seqlen_offset) + n_rows - 1} need "
                         f"{int(seqlen_offset) + n_rows} rows of cos/sin, got {cos.shape[0]}")
    if x.device.type == "cpu" and cu_seqlens is not None:
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != x.shape[0] or any(b < a for a, b in zip(c[:-1], c[1:])):
            raise ValueError(f"apply_rotary: cu_seqlens must rise from 0 to T={x.shape[0]}, got {c}")
        longest = max(b - a for a, b in zip(c[:-1], c[1:]))
        if max_seqlen is not None and max_seqlen < longest:
            raise ValueError(f"apply_rotary: max_seqlen={max_seqlen} is below the longest sequence ({longest})")
        off = int(seqlen_offset.max()) if isinstance(seqlen_offset, torch.Tensor) else int(seqlen_offset)
        if longest + off > cos.shape[0]:
            raise ValueError(f"apply_rotary: a sequence of {longest} tokens (offset {off}) needs "
                             f"{longest + off} rows of cos/sin, got {cos.shape[0]}")
