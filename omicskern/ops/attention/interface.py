"""Public attention op: argument checks, the ``BACKENDS`` registry, backend choice and dispatch.

Backends (see :mod:`omicskern.ops.backends` for the rule), each in a file named after it:

* ``flash_attn`` (``flash.py``): the flash-attn package (CUDA, fp16/bf16), when importable;
* ``triton`` (``triton.py``): omicskern's own FlashAttention-2 style kernels (CUDA, or CPU under
  ``TRITON_INTERPRET=1``), a custom op with its autograd registered there;
* ``sdpa`` (``sdpa.py``): ``torch.nn.functional.scaled_dot_product_attention`` with ALiBi/padding as
  an additive bias;
* ``reference`` (``reference.py``): the plain-PyTorch definition in float32 (float64 for float64 inputs).

``flash.py`` and ``triton.py`` (hence flash-attn and triton) are imported only when chosen.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from omicskern.ops import backends
from omicskern.ops.packing import is_right_padded
from omicskern.ops.attention.reference import attention_ref
from omicskern.ops.attention.sdpa import attention_sdpa

_PKG = "omicskern.ops.attention"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "flash_attn": backends.Backend(f"{_PKG}.flash", "attention_flash", requires="flash_attn"),
    "triton": backends.Backend(f"{_PKG}.triton", "attention_triton", requires="triton"),
    "sdpa": backends.Backend(f"{_PKG}.sdpa", "attention_sdpa"),
    "reference": backends.Backend(f"{_PKG}.reference", "attention_ref"),
}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              alibi_slopes: torch.Tensor | Sequence[float] | None = None,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
              key_padding_mask: torch.Tensor | None = None, softmax_scale: float | None = None,
              dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention (self-attention), differentiable in q, k, v.

    Layouts:
        * padded: ``q: [B, L, H, D]``, ``k, v: [B, L, Hk, D]``;
        * packed (variable length): ``q: [T, H, D]``, ``k, v: [T, Hk, D]`` with
          ``cu_seqlens: int32 [N + 1]`` (``0, len_0, len_0 + len_1, ..., T``), sequence ``n`` being rows
          ``cu_seqlens[n]:cu_seqlens[n + 1]``; ``max_seqlen`` (max length, optional) saves a device sync
          (on CUDA it is then trusted: rows of a longer sequence past it would be left NaN).
        ``H % Hk == 0`` (grouped-query attention: query head ``h`` uses kv head ``h // (H // Hk)``).

    Args:
        causal: keys after the query (within its sequence) are dropped.
        alibi_slopes: ``[H]`` slopes; adds ``-slope[h] * |i - j|`` to the scores (DNABERT-2 / flash-attn
            convention, positions counted from each sequence's start). Not differentiated.
            :func:`alibi_slopes` gives DNABERT-2's values.
        key_padding_mask: ``bool [B, L]``, True = real token (padded layout only). Padded keys are
            dropped and the output rows of padded queries are 0. The ``triton`` and ``flash_attn``
            backends need right padding (each row True then False); they unpad, run varlen, pad.
            Other masks go to ``sdpa`` when the backend is chosen automatically.
        softmax_scale: defaults to ``1 / sqrt(D)``.
        dropout_p: attention-probability dropout (``sdpa``, ``reference``, ``flash_attn`` only).
        backend: ``"flash_attn" | "triton" | "sdpa" | "reference"``, or None for the best available
            (CUDA: flash_attn, then triton; CPU: sdpa, reference for float64). The environment
            variable ``OMICSKERN_ATTENTION_BACKEND`` overrides None.

    Returns:
        Tensor of q's shape and dtype.

    Example:
        >>> q = k = v = torch.randn(2, 17, 4, 32)
        >>> out = attention(q, k, v, alibi_slopes=alibi_slopes(4))  # [2, 17, 4, 32]
    """
    alibi = _check(q, k, v, causal, alibi_slopes, cu_seqlens, max_seqlen, key_padding_mask,
                   softmax_scale, dropout_p)
    if cu_seqlens is not None and cu_seqlens.dtype != torch.int32:
        cu_seqlens = cu_seqlens.to(torch.int32)
    name = choose_backend(q, dropout_p=dropout_p, backend=backend)
    if (name in ("triton", "flash_attn") and key_padding_mask is not None and backend is None
            and not os.environ.get(backends.env_var("attention")) and not is_right_padded(key_padding_mask)):
        name = "sdpa"  # automatic choice only: unpadding would shift positions of other masks
    kw = dict(causal=causal, alibi_slopes=alibi, softmax_scale=softmax_scale)
    if name == "reference":
        return attention_ref(q, k, v, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask,
                             dropout_p=dropout_p, **kw)
    if name == "sdpa":
        return attention_sdpa(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                              key_padding_mask=key_padding_mask, dropout_p=dropout_p, **kw)
    if name == "triton":
        from omicskern.ops.attention.triton import attention_triton

        return attention_triton(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                                key_padding_mask=key_padding_mask, **kw)
    from omicskern.ops.attention.flash import attention_flash

    return attention_flash(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                           key_padding_mask=key_padding_mask, dropout_p=dropout_p, **kw)


def choose_backend(q: torch.Tensor, *, dropout_p: float = 0.0, backend: str | None = None) -> str:
    """The backend :func:`attention` would use for inputs like ``q`` (see :func:`attention`)."""
    dev, dt, D = q.device.type, q.dtype, q.shape[-1]

    def flash_probe():
        if not backends.has_flash_attn():
            return "the 'flash-attn' package is not installed (pip install omicskern[flash])"
        if dev != "cuda":
            return f"flash-attn needs CUDA tensors (inputs are on '{dev}')"
        if dt not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs float16 or bfloat16 inputs (got {dt})"
        if D > MAX_HEAD_DIM:
            return f"flash-attn supports head dim <= {MAX_HEAD_DIM} (got {D})"
        return None

    def triton_probe():
        reason = backends.triton_probe(dev)
        if reason is not None:
            return reason
        if dt not in (torch.float16, torch.bfloat16, torch.float32):
            return f"the Triton kernels take float16, bfloat16 or float32 (got {dt})"
        if dropout_p > 0.0:
            return "the Triton kernels do not implement dropout (use backend='sdpa')"
        if D > MAX_HEAD_DIM:
            return f"the Triton kernels support head dim <= {MAX_HEAD_DIM} (got {D})"
        return None

    probes = {"flash_attn": flash_probe, "triton": triton_probe,
              "sdpa": lambda: None, "reference": lambda: None}
    if dev == "cuda":
        preference = ["flash_attn", "triton", "sdpa", "reference"]
    elif dt == torch.float64:
        preference = ["reference", "sdpa"]
    else:
        preference = ["sdpa", "reference"]
    return backends.choose("attention", backend, probes, preference)


def _check(q, k, v, causal, alibi_slopes, cu_seqlens, max_seqlen, key_padding_mask, softmax_scale,
           dropout_p) -> torch.Tensor | None:
    """Validate the arguments of :func:`attention`; returns the ALiBi slopes as a float32 tensor."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"attention: {name} has dtype {t.dtype}; expected float16, bfloat16, "
                            "float32 or float64")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype (got {q.dtype}, {k.dtype}, {v.dtype})")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device (got {q.device}, {k.device}, {v.device})")
    packed = cu_seqlens is not None
    want = 3 if packed else 4
    lay = "[T, H, D] (packed, with cu_seqlens)" if packed else "[B, L, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != want:
            hint = "" if packed else " (packed [T, H, D] inputs need cu_seqlens)"
            raise ValueError(f"attention: {name} must be {lay}, got shape {tuple(q.shape)}{hint}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention: k {tuple(k.shape)} does not match q {tuple(q.shape)} "
                         "(same batch, length and head dim required; self-attention only)")
    H, Hk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if H == 0 or Hk == 0 or H % Hk != 0:
        raise ValueError(f"attention: q has {H} heads, k/v have {Hk}; H must be a multiple of Hk")
    if D == 0:
        raise ValueError("attention: head dim is 0")
    if packed:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("attention: cu_seqlens must be a 1-D tensor [N + 1] with N >= 1")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"attention: cu_seqlens must be int32 (got {cu_seqlens.dtype})")
        if cu_seqlens.device != q.device:
            raise ValueError(f"attention: cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
        if key_padding_mask is not None:
            raise ValueError("attention: key_padding_mask is for the padded layout; packed inputs "
                             "describe their lengths with cu_seqlens")
        if cu_seqlens.device.type == "cpu" or max_seqlen is None:  # full check costs a sync on GPU
            c = cu_seqlens.tolist()
            if c[0] != 0 or c[-1] != q.shape[0]:
                raise ValueError(f"attention: cu_seqlens must start at 0 and end at T={q.shape[0]} "
                                 f"(got {c[0]} ... {c[-1]})")
            bad = [n for n in range(len(c) - 1) if c[n + 1] < c[n]]
            if bad:
                raise ValueError(f"attention: cu_seqlens decreases at sequence {bad[0]} "
                                 f"({c[bad[0]]} -> {c[bad[0] + 1]})")
            if max_seqlen is not None and max_seqlen < max(b - a for a, b in zip(c[:-1], c[1:])):
                raise ValueError(f"attention: max_seqlen={max_seqlen} is below the longest sequence "
                                 f"({max(b - a for a, b in zip(c[:-1], c[1:]))})")
    elif max_seqlen is not None:
        raise ValueError("attention: max_seqlen is only for packed inputs with cu_seqlens")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"attention: key_padding_mask must be bool (True = keep), got "
                            f"{key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != tuple(q.shape[:2]):
            raise ValueError(f"attention: key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                             f"expected [B, L] = {tuple(q.shape[:2])}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device}, q on {q.device}")
    if not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if softmax_scale is not None and not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"attention: softmax_scale must be a positive finite float, got {softmax_scale}")
    if alibi_slopes is None:
        return None
    slopes = torch.as_tensor(alibi_slopes, dtype=torch.float32)
    if slopes.dim() == 2 and slopes.shape[0] == 1:
        slopes = slopes[0]
    if slopes.dim() != 1 or slopes.shape[0] != H:
        raise ValueError(f"attention: alibi_slopes must have shape [H] = [{H}], got "
                         f"{tuple(slopes.shape)}")
    return slopes.to(q.device)
