"""One numerical criterion for every op test: a backend's result against a high-precision reference.

``assert_close(got, ref)`` checks, elementwise and in float64::

    |got - ref| <= factor * max|baseline - ref| + atol * scale + rtol * |ref|

* ``ref``: the reference (float64, or the plain definition) fed the *same* (already rounded) inputs;
* ``atol``, ``rtol``: per dtype of ``got`` (the computation's dtype) from :data:`TOL`, unless given.
  A test whose own bound is tighter than the table passes it (``atol=``, ``rtol=`` or ``tol=``, a
  per-dtype table of its own); a bound is never loosened that way without saying why;
* ``scale``: multiplies ``atol``: 1 (absolute), or e.g. ``max|ref|`` for outputs whose rounding
  error grows with the whole signal (FFTs), or ``max|ref| + 1`` for gradients summed over a batch;
* ``baseline`` (FlashAttention's criterion): the same computation done plainly in the low-precision
  dtype (e.g. ``attention_ref(..., upcast=False)``). A backend may then be up to ``factor`` (2) times
  as far from the reference as that plain computation, plus a small ``atol`` from
  :data:`BASELINE_ATOL` (outputs and gradients per dtype) and, by default, no ``rtol``. With
  ``rtol = 0`` and ``scale = 1`` this is ``max|got - ref| <= 2 max|baseline - ref| + atol``.

Both also require equal shapes and finite values in ``got`` and ``ref`` (torch.testing's NaN rule,
and stricter for infinities).
"""

from __future__ import annotations

from typing import Mapping

import torch

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# (atol, rtol) per dtype of the computation: fp32 accumulation of a short sum, the result rounded
# once to the dtype (half an ulp: rtol 2^-11 fp16, 2^-8 bf16), with slack for the summation order.
TOL: dict[torch.dtype, tuple[float, float]] = {
    F64: (1e-12, 1e-12),
    F32: (1e-5, 1e-5),
    F16: (2e-3, 2e-3),
    BF16: (1.6e-2, 1.6e-2),
}

# Baseline criterion: atol added to factor x the plain low-precision error, (outputs, gradients).
# fp32's plain path is almost exact (~1e-7), so its slack covers a kernel's different summation
# order; fp16/bf16 plain paths round p and the scores, which dominates.
BASELINE_ATOL: dict[torch.dtype, tuple[float, float]] = {
    F32: (2e-6, 4e-6),
    F16: (1e-4, 2e-4),
    BF16: (2e-3, 5e-3),
    F64: (1e-12, 1e-12),
}


def max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| in float64."""
    return (got.detach().double() - ref.detach().double()).abs().max().item() if ref.numel() else 0.0


def assert_close(got: torch.Tensor, ref: torch.Tensor, *, dtype: torch.dtype | None = None,
                 atol: float | None = None, rtol: float | None = None,
                 tol: Mapping[torch.dtype, tuple[float, float]] | None = None,
                 scale: float | str | torch.Tensor = 1.0, baseline: torch.Tensor | None = None,
                 factor: float = 2.0, grad: bool = False, what: str = "") -> None:
    """Assert ``got`` matches ``ref`` under the criterion of this module's docstring.

    Args:
        got: the backend's result (its dtype picks the tolerances unless ``dtype`` is given).
        ref: the reference result, any float dtype (compared in float64).
        dtype: dtype whose tolerances apply (default ``got.dtype``).
        atol, rtol: override the table's values (each may be given alone).
        tol: a per-dtype ``{dtype: (atol, rtol)}`` table replacing :data:`TOL` (or
            :data:`BASELINE_ATOL`'s atol with ``baseline``).
        scale: factor on ``atol``: a float, a tensor broadcasting against ``ref``, or ``"max"`` for
            ``max|ref|`` (scale-aware bound for FFT outputs).
        baseline: the plain low-precision computation (FlashAttention-style criterion).
        factor: how many times the baseline's max error a backend may have.
        grad: with ``baseline``, use the gradient column of :data:`BASELINE_ATOL`.
        what: name printed in the failure message.
    """
    dtype = dtype or got.dtype
    if tol is not None:
        t_atol, t_rtol = tol[dtype]
    elif baseline is not None:
        t_atol, t_rtol = BASELINE_ATOL[dtype][1 if grad else 0], 0.0
    else:
        t_atol, t_rtol = TOL[dtype]
    atol = t_atol if atol is None else atol
    rtol = t_rtol if rtol is None else rtol
    label = f"{what}: " if what else ""
    assert tuple(got.shape) == tuple(ref.shape), (f"{label}shape {tuple(got.shape)} != reference "
                                                  f"{tuple(ref.shape)}")
    g, r = got.detach().double(), ref.detach().double()
    assert torch.isfinite(g).all(), f"{label}non-finite values in the result"
    assert torch.isfinite(r).all(), f"{label}non-finite values in the reference"
    if isinstance(scale, str):
        assert scale == "max", f"unknown scale {scale!r}"
        scale = r.abs().max().clamp(min=1e-30) if r.numel() else 1.0
    base_err = 0.0
    if baseline is not None:
        assert tuple(baseline.shape) == tuple(ref.shape), f"{label}baseline shape {tuple(baseline.shape)}"
        base_err = max_error(baseline, r)
    err = (g - r).abs()
    bound = factor * base_err + atol * scale + rtol * r.abs()
    bad = err > bound
    if bad.any():
        i = int((err - bound).flatten().argmax())
        msg = (f"{label}{int(bad.sum())}/{bad.numel()} elements off ({dtype}, atol={atol:.3g}"
               f"{'' if isinstance(scale, float) and scale == 1.0 else ' x scale'}, rtol={rtol:.3g}); "
               f"max err {err.max().item():.3e}, worst element err {err.flatten()[i].item():.3e} > bound "
               f"{torch.as_tensor(bound).expand_as(err).flatten()[i].item():.3e}; max|ref| {r.abs().max().item():.3g}")
        if baseline is not None:
            msg += f"; plain {dtype} error {base_err:.3e} (x{factor:g} allowed)"
        raise AssertionError(msg)
