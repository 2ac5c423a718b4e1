"""The shape every op folder shares, and stable names in ``omicskern.ops``."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from omicskern.ops import backends

OPS = ("attention", "conv1d", "fftconv", "rotary", "selective_scan", "rmsnorm")


def test_ops_names_are_stable():
    """Each public name of omicskern.ops is one object, before and after importing every submodule
    (a fresh interpreter, so nothing is imported before the first access)."""
    code = textwrap.dedent("""
        import importlib, pkgutil
        import omicskern.ops as ops
        names = list(ops.__all__)
        assert sorted(n for n in dir(ops) if not n.startswith("_")) == sorted(names), dir(ops)
        before = {n: getattr(ops, n) for n in names}
        from omicskern.ops import attention, rotary  # the from-import form too
        assert attention is before["attention"] and rotary is before["rotary"]
        for m in pkgutil.walk_packages(ops.__path__, "omicskern.ops."):
            if not m.name.endswith(".triton") and not m.name.endswith(".flash"):
                importlib.import_module(m.name)
        after = {n: getattr(ops, n) for n in names}
        assert all(before[n] is after[n] for n in names), [n for n in names if before[n] is not after[n]]
        assert all(type(v).__name__ == "module" for v in after.values()), after
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]


def test_ops_names_in_this_process():
    import omicskern.ops as ops

    for name in ops.__all__:
        obj = getattr(ops, name)
        assert obj is importlib.import_module(f"omicskern.ops.{name}")
        assert obj is getattr(ops, name)
    with pytest.raises(AttributeError):
        ops.fft_conv  # functions live in their submodule: omicskern.ops.fftconv.fft_conv


@pytest.mark.parametrize("op", OPS)
def test_op_folder_shape(op):
    """interface.py has BACKENDS and choose_backend; each backend's module is a file named after it
    (flash_attn -> flash.py) in the op's folder; the package re-exports the public names."""
    pkg = importlib.import_module(f"omicskern.ops.{op}")
    interface = importlib.import_module(f"omicskern.ops.{op}.interface")
    assert pkg.BACKENDS is interface.BACKENDS
    assert pkg.choose_backend is interface.choose_backend
    assert "reference" in interface.BACKENDS
    for name, be in interface.BACKENDS.items():
        assert isinstance(be, backends.Backend)
        stem = be.module.rsplit(".", 1)[1]
        assert be.module == f"omicskern.ops.{op}.{stem}" and stem == {"flash_attn": "flash"}.get(name, name)
        assert importlib.util.find_spec(be.module) is not None, be.module
        if be.requires is None:  # importable everywhere: the entry point exists
            assert callable(be.load())
    assert importlib.util.find_spec(f"omicskern.ops.{op}.reference") is not None


def test_reference_files_hold_only_definitions():
    """reference.py: the plain math, no backend (attention_sdpa lives in sdpa.py)."""
    from omicskern.ops.attention import reference, sdpa

    assert not hasattr(reference, "attention_sdpa") and hasattr(sdpa, "attention_sdpa")
    from omicskern.ops.fftconv import interface

    assert not hasattr(interface, "FftConvTorchFn")


def test_choose_backend_knows_every_registered_backend():
    """Every name in BACKENDS is accepted by choose_backend (runs, or is unavailable here)."""
    import torch

    from omicskern.errors import BackendUnavailableError
    from omicskern.ops import attention, conv1d, fftconv, rotary

    x4 = torch.zeros(1, 4, 1, 8)
    calls = {
        attention: lambda b: attention.choose_backend(x4, backend=b),
        rotary: lambda b: rotary.choose_backend(x4, backend=b),
        fftconv: lambda b: fftconv.choose_backend(torch.zeros(1, 2, 8), backend=b),
        conv1d: lambda b: conv1d.choose_backend(torch.zeros(1, 2, 8), torch.zeros(2, 3), backend=b),
    }
    for mod, choose in calls.items():
        for name in mod.BACKENDS:
            try:
                assert choose(name) == name
            except BackendUnavailableError:
                pass
        with pytest.raises(ValueError, match="unknown backend"):
            choose("nope")


_NO_TRITON = r"""
import os, sys
sys.modules["triton"] = None          # `import triton` now raises ImportError
os.environ["TRITON_INTERPRET"] = "1"  # would let Triton run on CPU, were it installed
import torch
from omicskern.errors import BackendUnavailableError
from omicskern.ops import backends
from omicskern.ops.attention import attention, alibi_slopes
from omicskern.ops.conv1d import causal_conv1d
from omicskern.ops.fftconv import fft_conv
from omicskern.ops.rotary import apply_rotary, rotary_cos_sin
import omicskern.modules, omicskern.models

assert not backends.has_triton()
q = torch.randn(2, 9, 2, 16)
u, k = torch.randn(2, 3, 20), torch.randn(3, 20)
cos, sin = rotary_cos_sin(9, 16)
runs = {
    "attention": (lambda b: attention(q, q, q, alibi_slopes=alibi_slopes(2), backend=b),
                  ["sdpa", "reference", None]),
    "fft_conv": (lambda b: fft_conv(u, k, backend=b), ["torch", "reference", None]),
    "causal_conv1d": (lambda b: causal_conv1d(u, k[:, :3], backend=b), ["torch", "reference", None]),
    "rotary": (lambda b: apply_rotary(q, cos, sin, backend=b), ["reference", None]),
}
for op, (f, cpu) in runs.items():
    for b in cpu:
        assert torch.isfinite(f(b)).all(), (op, b)
    try:
        f("triton")
    except BackendUnavailableError as e:
        assert "pip install triton" in str(e), (op, str(e))
    else:
        raise AssertionError(f"{op}: backend='triton' ran without triton")
    os.environ[backends.env_var(op)] = "triton"
    try:
        f(None)
    except BackendUnavailableError as e:
        assert "pip install triton" in str(e) and backends.env_var(op) in str(e), (op, str(e))
    else:
        raise AssertionError(f"{op}: ${backends.env_var(op)}=triton ran without triton")
    del os.environ[backends.env_var(op)]
assert "triton" not in [m.split(".")[-1] for m in sys.modules if m.startswith("omicskern.ops.")]
print("OK")
"""


def test_cpu_paths_without_triton():
    """triton is optional: with it missing, every op imports, its CPU backends run, and a named
    triton backend (argument or env var) raises BackendUnavailableError with the install hint."""
    r = subprocess.run([sys.executable, "-c", _NO_TRITON], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout[-2000:] + r.stderr[-3000:]
