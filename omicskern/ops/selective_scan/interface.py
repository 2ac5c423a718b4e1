"""``selective_scan``: Mamba's selective state-space scan (S6), and its one-step decoding update.

Backends (``OMICSKERN_SELECTIVE_SCAN_BACKEND``), each in a file named after it:

* ``triton`` (``triton.py``): a chunked parallel scan, state in registers, D skip and z gate
  fused, with a backward (CUDA default; CPU only through ``TRITON_INTERPRET=1``); imported only
  when chosen;
* ``torch`` (``torch.py``): an exact chunked scan with no Python loop over L and its own adjoint
  backward (the CPU default);
* ``reference`` (``reference.py``): the sequential definition through plain autograd (float64
  when given float64).

See ``docs/selective_scan.md`` for the definition, the shapes and the numerics.
"""

from __future__ import annotations

import torch

from omicskern.ops import backends
from omicskern.ops.selective_scan.reference import selective_scan_ref, selective_state_update_ref
from omicskern.ops.selective_scan.torch import selective_scan_torch

_OP = "selective_scan"
_PKG = "omicskern.ops.selective_scan"
BACKENDS: dict[str, backends.Backend] = {  # best first on CUDA
    "triton": backends.Backend(f"{_PKG}.triton", "selective_scan_triton", requires="triton"),
    "torch": backends.Backend(f"{_PKG}.torch", "selective_scan_torch"),
    "reference": backends.Backend(f"{_PKG}.reference", "selective_scan_ref"),
}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_bc(name, X, batch, dim, N, L):
    if not isinstance(X, torch.Tensor) or X.dim() not in (2, 3, 4):
        raise ValueError(f"selective_scan: {name} must be [D, N], [B, N, L] or [B, G, N, L], got {_shape(X)}")
    if X.dim() == 2 and tuple(X.shape) != (dim, N):
        raise ValueError(f"selective_scan: time-invariant {name} has shape {_shape(X)}, expected ({dim}, {N})")
    if X.dim() == 3 and tuple(X.shape) != (batch, N, L):
        raise ValueError(f"selective_scan: {name} has shape {_shape(X)}, expected ({batch}, {N}, {L}) = [B, N, L]")
    if X.dim() == 4:
        G = X.shape[1]
        if X.shape[0] != batch or X.shape[2:] != (N, L) or G < 1 or dim % G:
            raise ValueError(f"selective_scan: grouped {name} has shape {_shape(X)}, expected ({batch}, G, {N}, {L}) "
                             f"with G dividing D={dim}")


def _check(u, delta, A, B, C, D, z, delta_bias):
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan: u must be a [B, D, L] tensor, got {_shape(u)}")
    batch, dim, L = u.shape
    if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan: delta has shape {_shape(delta)}, expected {tuple(u.shape)} (as u)")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be [D={dim}, N], got {_shape(A)}")
    if A.is_complex():
        raise TypeError("selective_scan: complex A is not supported (Mamba / Caduceus use real A)")
    N = A.shape[1]
    _check_bc("B", B, batch, dim, N, L)
    _check_bc("C", C, batch, dim, N, L)
    for name, t, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, tuple(u.shape))):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != shape):
            raise ValueError(f"selective_scan: {name} has shape {_shape(t)}, expected {shape}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is None:
            continue
        if t.dtype not in _FLOATS:
            raise TypeError(f"selective_scan: {name} has dtype {t.dtype}; expected a floating dtype")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, backend: str | None = None):
    """Mamba's selective scan, with mamba_ssm 1.x ``selective_scan_fn`` semantics and shapes::

        delta' = softplus(delta + delta_bias)            (each optional)
        h_t    = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t      (h_{-1} = 0, per channel d)
        y_t    = <h_t, C_t> + D u_t,   out = y * silu(z)

    Args:
        u, delta: ``[B, D, L]``.
        A: ``[D, N]``, real (Mamba's ``-exp(A_log)``, negative).
        B, C: ``[D, N]`` (time-invariant), ``[B, N, L]`` or ``[B, G, N, L]`` (variable, channel d
            uses group ``d // (D / G)``); B and C may differ in layout.
        D: ``[D]`` skip, ``z``: ``[B, D, L]`` gate, ``delta_bias``: ``[D]``; each optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last step, ``[B, D, N]``.
        backend: ``"triton"``, ``"torch"``, ``"reference"`` or None (CUDA -> triton, CPU ->
            torch); ``OMICSKERN_SELECTIVE_SCAN_BACKEND`` overrides None.
    Returns:
        ``out`` ``[B, D, L]`` in u's dtype, or ``(out, last_state)``; last_state is float32
        (float64 for float64 u). States accumulate in fp32 whatever the input dtype.
        Differentiable in every tensor input (the gradient of last_state is used too).

    Example:
        >>> u, delta = torch.randn(2, 8, 100), torch.rand(2, 8, 100)
        >>> A = -torch.rand(8, 16) - 0.5
        >>> B, C = torch.randn(2, 16, 100), torch.randn(2, 16, 100)
        >>> out, last = selective_scan(u, delta, A, B, C, D=torch.ones(8), delta_softplus=True,
        ...                            return_last_state=True)
        >>> out.shape, last.shape
        (torch.Size([2, 8, 100]), torch.Size([2, 8, 16]))
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if u.numel() == 0 or A.shape[1] == 0:  # empty: zero outputs, zero gradients for every input
        zero = sum((t.sum() * 0 for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None), u.new_zeros(()))
        y = u * 0 + zero
        last = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64 if u.dtype == torch.float64
                           else torch.float32)
        return (y, last) if return_last_state else y
    name = choose_backend(u, A, backend=backend)
    if name == "reference":
        out = selective_scan_ref(*args)
        return (out[0].to(u.dtype), out[1]) if return_last_state else out.to(u.dtype)
    if name == "torch":
        return selective_scan_torch(*args)
    from omicskern.ops.selective_scan.triton import selective_scan_triton

    return selective_scan_triton(*args)


def choose_backend(u: torch.Tensor, A: torch.Tensor | None = None, *, backend: str | None = None) -> str:
    """The backend :func:`selective_scan` would use for inputs like ``u`` (and ``A``)."""

    def triton_probe():
        reason = backends.triton_probe(u.device.type)
        if reason is not None:
            return reason
        from omicskern.ops.selective_scan import triton as tk

        return tk.unsupported_reason(u, A)

    probes = {"triton": triton_probe, "torch": lambda: None, "reference": lambda: None}
    preference = ["triton", "torch"] if u.device.type == "cuda" else ["torch"]
    return backends.choose(_OP, backend, probes, preference)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                           z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                           dt_softplus: bool = False) -> torch.Tensor:
    """One step of the scan for recurrent decoding (mamba_ssm's ``selective_state_update``).

    Updates ``state`` in place to ``exp(dt' A) state + dt' B x`` and returns
    ``out = (<state, C> + D x) * silu(z)``, with ``dt' = softplus(dt + dt_bias)`` (each optional).

    Args:
        state: ``[B, D, N]`` (updated in place; fp32 recommended).
        x, dt, z: ``[B, D]``; A: ``[D, N]``; B, C: ``[B, N]`` or ``[B, G, N]``; D, dt_bias: ``[D]``.
    Returns:
        ``[B, D]`` in x's dtype. Stepping t = 0..L-1 from a zero state gives the outputs of
        :func:`selective_scan` and leaves its ``last_state`` in ``state``.

    Example:
        >>> state = torch.zeros(2, 8, 16)
        >>> out = selective_state_update(state, torch.randn(2, 8), torch.rand(2, 8), -torch.rand(8, 16),
        ...                              torch.randn(2, 16), torch.randn(2, 16))
    """
    if not isinstance(state, torch.Tensor) or state.dim() != 3:
        raise ValueError(f"selective_state_update: state must be [B, D, N], got {_shape(state)}")
    batch, dim, N = state.shape
    for name, t in (("x", x), ("dt", dt), ("z", z)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (batch, dim)):
            raise ValueError(f"selective_state_update: {name} has shape {_shape(t)}, expected ({batch}, {dim})")
    if not isinstance(A, torch.Tensor) or tuple(A.shape) != (dim, N):
        raise ValueError(f"selective_state_update: A has shape {_shape(A)}, expected ({dim}, {N})")
    for name, X in (("B", B), ("C", C)):
        ok = isinstance(X, torch.Tensor) and (
            (X.dim() == 2 and tuple(X.shape) == (batch, N))
            or (X.dim() == 3 and X.shape[0] == batch and X.shape[2] == N and X.shape[1] >= 1 and dim % X.shape[1] == 0))
        if not ok:
            raise ValueError(f"selective_state_update: {name} has shape {_shape(X)}, expected ({batch}, {N}) or "
                             f"({batch}, G, {N}) with G dividing D={dim}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (dim,)):
            raise ValueError(f"selective_state_update: {name} has shape {_shape(t)}, expected ({dim},)")
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
