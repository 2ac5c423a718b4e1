"""selective_scan: backends against the sequential float64 definition, and against mamba_ssm's own
``selective_scan_ref`` values (tests/data/fixtures/caduceus_tiny_selective_scan.npz, copied from
../shared/fixtures/caduceus_tiny).

Tolerances: fp64 backends match the definition to rounding (1e-12 x max|ref|: the chunked scan
adds the same terms in another grouping). Lower precisions are compared with the float64
definition fed the same rounded inputs: states accumulate in fp32, so fp32 gets 1e-5 x max|ref|
(the fixture README's bound, >= 20x its observed error), fp16/bf16 outputs are bounded by their
final rounding (rtol 2^-10 / 2^-7) plus the fp32 accumulation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omicskern.ops import backends
from omicskern.ops.selective_scan import (selective_scan, selective_scan_ref, selective_state_update)
from tests._numerics import assert_close

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DEV = "cuda" if torch.cuda.is_available() else "cpu"
FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "data/fixtures/caduceus_tiny_selective_scan.npz"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# per dtype: (atol x max|ref|, rtol)
TOL = {F64: (1e-12, 1e-12), F32: (1e-5, 1e-4), F16: (1e-3, 2e-3), BF16: (8e-3, 1.6e-2)}


def _skip_unless_runs(backend):
    if backend == "triton" and backends.triton_probe(DEV) is not None:
        pytest.skip("Triton kernels cannot run here")


def make(batch, dim, L, N, b_layout="var", c_layout="var", dtype=F64, seed=0, D=True, z=True,
         bias=True, dt_scale=1.0):
    """Inputs as a Mamba layer makes them: A = -exp(.) < 0, delta ~ softplus of a biased projection."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731

    def bc(layout):
        if layout == "inv":
            return r(dim, N)
        if layout == "var":
            return r(batch, N, L)
        return r(batch, int(layout[1:]), N, L)  # "g2": 2 groups

    out = dict(u=r(batch, dim, L), delta=r(batch, dim, L) * dt_scale,
               A=-torch.exp(torch.log(torch.arange(1, N + 1, dtype=F64)) + 0.2 * r(dim, N)),
               B=bc(b_layout), C=bc(c_layout),
               D=r(dim) if D else None, z=r(batch, dim, L) if z else None,
               delta_bias=r(dim) - 2.0 if bias else None)
    return {k: (v.to(dtype) if v is not None else None) for k, v in out.items()}


def _grads(out, last, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g, dtype=F64)
    dl = torch.randn(last.shape, generator=g, dtype=F64)
    loss = (out.double() * dy).sum() + (last.double() * dl).sum()
    names = [k for k, v in inputs.items() if v is not None]
    return dict(zip(names, torch.autograd.grad(loss, [inputs[k] for k in names])))


CASES = [  # batch, dim, L, N, B layout, C layout
    pytest.param(2, 8, 37, 16, "var", "var", id="B2-D8-L37-N16-varBC"),
    pytest.param(1, 6, 113, 4, "inv", "g2", id="B1-D6-L113-N4-invB-g2C"),
    pytest.param(2, 4, 1, 3, "g2", "inv", id="B2-D4-L1-N3-g2B-invC"),
    pytest.param(2, 12, 151, 5, "g4", "g2", id="B2-D12-L151-N5-g4B-g2C"),
    pytest.param(1, 5, 64, 2, "inv", "inv", id="B1-D5-L64-N2-invBC"),
]


def _check_backend(backend, batch, dim, L, N, bl, cl, dtype, softplus=True, **kw):
    _skip_unless_runs(backend)
    x = make(batch, dim, L, N, bl, cl, dtype=dtype, seed=L + N, **kw)
    ins = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    out, last = selective_scan(**ins, delta_softplus=softplus, return_last_state=True, backend=backend)
    assert out.dtype == dtype and out.shape == (batch, dim, L) and last.shape == (batch, dim, N)
    assert last.dtype == (F64 if dtype == F64 else F32)
    ref_in = {k: (v.double().clone().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    rout, rlast = selective_scan_ref(**ref_in, delta_softplus=softplus, return_last_state=True)
    atol, rtol = TOL[dtype]
    assert_close(out, rout, atol=atol, rtol=rtol, scale="max", what="out")
    assert_close(last, rlast, atol=atol, rtol=rtol, scale="max", dtype=dtype, what="last_state")
    if dtype in (F16, BF16):
        return  # gradients of half inputs: covered in fp32 (same fp32 accumulation)
    got, want = _grads(out, last, ins), _grads(rout, rlast, ref_in)
    for k in want:
        # gradients of A, D, delta_bias (and invariant B/C) sum over batch and time
        assert_close(got[k], want[k], atol=atol, rtol=rtol, scale="max", dtype=dtype, what=f"grad {k}")


@pytest.mark.parametrize("dtype", [F64, F32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("batch,dim,L,N,bl,cl", CASES)
def test_torch_backend(batch, dim, L, N, bl, cl, dtype):
    _check_backend("torch", batch, dim, L, N, bl, cl, dtype)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_torch_backend_half(dtype):
    _check_backend("torch", 2, 8, 37, 16, "var", "var", dtype)


@pytest.mark.parametrize("opts", [dict(D=False, z=False, bias=False), dict(z=False), dict(D=False, bias=False)],
                         ids=["plain", "noz", "noD-nobias"])
def test_torch_backend_optional_inputs(opts):
    _check_backend("torch", 2, 6, 29, 4, "var", "inv", F64, softplus=False, **opts)


TRITON_CASES = [  # small: the interpreter is slow
    pytest.param(2, 8, 37, 16, "var", "var", F32, id="B2-D8-L37-N16-varBC-fp32"),
    pytest.param(1, 6, 45, 3, "inv", "g2", F32, id="B1-D6-L45-N3-invB-g2C-fp32"),
    pytest.param(2, 4, 1, 5, "g2", "inv", F32, id="B2-D4-L1-N5-g2B-invC-fp32"),
    pytest.param(1, 12, 70, 4, "g4", "g2", F16, id="B1-D12-L70-N4-g4B-g2C-fp16"),
]


@pytest.mark.parametrize("batch,dim,L,N,bl,cl,dtype", TRITON_CASES)
def test_triton_backend(batch, dim, L, N, bl, cl, dtype):
    """Interpreter on CPU (CUDA when present): several chunks per row (BLOCK_L 16 at these sizes)."""
    _check_backend("triton", batch, dim, L, N, bl, cl, dtype)


@pytest.mark.parametrize("opts", [dict(D=False, z=False, bias=False), dict(z=False)], ids=["plain", "noz"])
def test_triton_backend_optional_inputs(opts):
    _check_backend("triton", 1, 4, 29, 4, "var", "inv", F32, **opts)


def test_torch_many_blocks(monkeypatch):
    """Blocks of a few chunks each, so block carries forward and backward (and the L padding) count."""
    from omicskern.ops.selective_scan import torch as tb

    monkeypatch.setattr(tb, "plan", lambda b, d, n, L: (5, 3))
    _check_backend("torch", 2, 4, 97, 3, "var", "g2", F64)


def test_torch_decays_underflow():
    """delta' A down to -1e3 per step: exp underflows to 0 (the true value rounded), nothing overflows."""
    _check_backend("torch", 1, 4, 200, 8, "var", "var", F32, dt_scale=30.0)


def test_reference_matches_mamba_selective_scan_ref():
    """The definition in fp64 against the fixture's float64 copy of mamba's selective_scan_ref."""
    f = np.load(FIXTURE)
    ins = {k: torch.from_numpy(f[k]).double().requires_grad_(True) for k in NAMES}
    out, last = selective_scan_ref(**ins, delta_softplus=True, return_last_state=True)
    scale = lambda k: 1e-10 * float(np.abs(f[k]).max())  # noqa: E731 (README: f64 implementation)
    assert_close(out, torch.from_numpy(f["out"]), atol=scale("out"), rtol=0, what="out")
    assert_close(last, torch.from_numpy(f["last_state"]), atol=scale("last_state"), rtol=0, what="last_state")
    grads = torch.autograd.grad((out * torch.from_numpy(f["dout"]).double()).sum(), [ins[k] for k in NAMES])
    for k, g in zip(NAMES, grads):
        assert_close(g, torch.from_numpy(f[f"grad_{k}"]), atol=scale(f"grad_{k}"), rtol=0, what=f"grad_{k}")


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_fixture_fp32(backend):
    """fp32 inputs through each backend against the fixture's float64 values (README tolerance:
    rtol 1e-4, atol 1e-5 max|ref| per array); the gradients are of sum(out * dout) only."""
    _skip_unless_runs(backend)
    f = np.load(FIXTURE)
    ins = {k: torch.from_numpy(f[k]).requires_grad_(True) for k in NAMES}
    out, last = selective_scan(**ins, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == F32
    tol = lambda k: dict(atol=1e-5 * float(np.abs(f[k]).max()), rtol=1e-4)  # noqa: E731
    assert_close(out, torch.from_numpy(f["out"]), **tol("out"), what="out")
    assert_close(last, torch.from_numpy(f["last_state"]), **tol("last_state"), what="last_state")
    grads = torch.autograd.grad((out * torch.from_numpy(f["dout"])).sum(), [ins[k] for k in NAMES])
    for k, g in zip(NAMES, grads):
        assert_close(g, torch.from_numpy(f[f"grad_{k}"]), **tol(f"grad_{k}"), what=f"grad_{k}")


@pytest.mark.parametrize("layout", [("var", "var"), ("g2", "g2")], ids=["BC", "grouped"])
def test_state_update_steps_equal_the_scan(layout):
    """Decoding token by token from a zero state gives the scan's outputs and its last state."""
    x = make(2, 8, 23, 6, *layout, dtype=F32, seed=5)
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="torch")
    state = torch.zeros(2, 8, 6)
    steps = []
    for t in range(23):
        B, C = x["B"][..., t], x["C"][..., t]
        steps.append(selective_state_update(state, x["u"][..., t], x["delta"][..., t], x["A"], B, C, x["D"],
                                            x["z"][..., t], x["delta_bias"], dt_softplus=True))
    assert_close(torch.stack(steps, -1), out, atol=1e-5, rtol=1e-5, scale="max", what="out")
    assert_close(state, last, atol=1e-5, rtol=1e-5, scale="max", what="state")


def test_default_backend_on_cpu_is_torch(monkeypatch):
    from omicskern.ops.selective_scan import choose_backend

    monkeypatch.delenv("OMICSKERN_SELECTIVE_SCAN_BACKEND", raising=False)
    assert choose_backend(torch.zeros(1, 1, 1)) == "torch"
    monkeypatch.setenv("OMICSKERN_SELECTIVE_SCAN_BACKEND", "reference")
    assert choose_backend(torch.zeros(1, 1, 1)) == "reference"


def test_empty():
    x = make(0, 4, 10, 3, "var", "var", dtype=F32)
    out, last = selective_scan(**x, return_last_state=True)
    assert out.shape == (0, 4, 10) and last.shape == (0, 4, 3)


def _bad(**change):
    x = make(2, 4, 10, 3, "var", "var", dtype=F32)
    x.update(change)
    return x


@pytest.mark.parametrize("kw,match", [
    (dict(u=torch.randn(4, 10)), r"u must be a \[B, D, L\]"),
    (dict(delta=torch.randn(2, 4, 9)), r"delta has shape \(2, 4, 9\), expected \(2, 4, 10\)"),
    (dict(A=torch.randn(5, 3)), r"A must be \[D=4, N\]"),
    (dict(B=torch.randn(2, 3, 9)), r"B has shape \(2, 3, 9\), expected \(2, 3, 10\)"),
    (dict(C=torch.randn(2, 3, 3, 10)), r"grouped C .* G dividing D=4"),
    (dict(B=torch.randn(4, 2)), r"time-invariant B"),
    (dict(D=torch.randn(3)), r"D has shape"),
    (dict(z=torch.randn(2, 4, 11)), r"z has shape"),
])
def test_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**_bad(**kw))


def test_bad_dtype_and_backend():
    with pytest.raises(TypeError, match="u has dtype torch.int64"):
        selective_scan(**_bad(u=torch.ones(2, 4, 10, dtype=torch.long)))
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        selective_scan(**_bad(), backend="nope")
    with pytest.raises(ValueError, match=r"state must be \[B, D, N\]"):
        selective_state_update(torch.zeros(2, 4), *[torch.zeros(2, 4)] * 2, torch.zeros(4, 3),
                               torch.zeros(2, 3), torch.zeros(2, 3))


_COMPILE_CHECK = r"""
import os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from omicskern.ops.selective_scan import triton as tri

bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
if not os.path.exists(os.path.join(bindir, "cuobjdump")):
    print("SKIP: triton wheel without the CUDA toolchain"); sys.exit(0)
# Caduceus-131k shapes: d_inner 512, N = 16, variable B/C, D and z, bf16 activations
BD, BL, NP = tri._blocks(512, 16, 131072, False)
for name, fn in (("fwd", tri._fwd_kernel), ("bwd", tri._bwd_kernel)):
    if name == "bwd":
        BD = tri._bwd_bd(BD, BL, NP, False)
    cons = dict(HAS_D=True, HAS_Z=True, VAR_B=True, VAR_C=True, HAS_DLAST=True, BD=BD, BL=BL, NP=NP)
    cons = {k: v for k, v in cons.items() if k in fn.arg_names}
    sig = {}
    for n in fn.arg_names:
        if n in cons:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = "*fp32" if n in ("A_ptr", "D_ptr", "hs_ptr", "last_ptr", "dlast_ptr", "dA_ptr", "dB_ptr",
                                      "dC_ptr", "dD_ptr", "dl_ptr", "ddl_ptr") else "*bf16"
        else:
            sig[n] = "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in cons.items()})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=1))
    except RuntimeError as e:
        if "ptxas" in str(e).lower():
            print("SKIP: ptxas unavailable"); sys.exit(0)
        raise
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"]); f.flush()
        usage = subprocess.run([os.path.join(bindir, "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    line = [l.strip() for l in usage.splitlines() if "REG:" in l][0]
    print(name, BD, BL, NP, line)
"""


@pytest.mark.skipif(not backends.has_triton(), reason="triton not installed")
def test_kernels_compile_for_sm90_without_spills():
    """No GPU needed: Triton's bundled ptxas builds the sm_90 cubins of the forward and backward
    kernels at Caduceus-131k shapes (bf16 activations, variable B/C, D, z) -- compiled-mode code
    the interpreter never runs -- and cuobjdump shows their register/stack use (stack > 0 =
    register spills)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["fwd", "bwd"], r.stdout
    for ln in lines:
        assert "STACK:0 " in ln, f"register spills: {ln}"
