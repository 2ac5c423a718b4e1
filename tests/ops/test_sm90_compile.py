"""Static sm_90 checks of the Triton kernels (no GPU): benchmarks/sm90_compile_check.py compiles
launched configurations with Triton's bundled ptxas and reads them back with cuobjdump.

* every configuration the dispatch code can choose is in the compile list (no compiling: the
  launch tables are called over every head dim / FFT size / dtype / flag);
* the representative subset compiles for sm_90 with zero register spills (launches with a
  documented ``known_spills`` reason excepted) and with ``wgmma`` wherever an MMA is expected.

The full sweep is ``python benchmarks/sm90_compile_check.py`` (-> benchmarks/results/sm90_compile.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omicskern.ops import backends

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sm90_compile_check.py"
pytestmark = pytest.mark.skipif(not backends.has_triton(), reason="triton not installed")


def _check_module():
    spec = importlib.util.spec_from_file_location("sm90_compile_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TRITON_INTERPRET")
    spec.loader.exec_module(mod)  # pops TRITON_INTERPRET; the kernel modules are already imported
    if saved is not None:
        os.environ["TRITON_INTERPRET"] = saved
    return mod


def _keys(launches, kernel):
    return {(tuple(sorted(la["constexprs"].items(), key=lambda kv: kv[0])), la["num_warps"], la["num_stages"])
            for la in launches if la["kernel"] == kernel}


def test_every_attention_dispatch_config_is_listed():
    from omicskern.ops.attention import triton as tri

    listed = tri.sm90_launches(full=True)
    fwd, kv, dq = _keys(listed, "fwd"), _keys(listed, "bwd_dkdv"), _keys(listed, "bwd_dq")
    for D in range(1, 257):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            fp32 = dt == torch.float32
            ck, cq = tri._bwd_config(D, False, 90, fp32)
            bd = tri._block_d(D)
            for causal in (False, True):
                for alibi in (False, True):
                    cf = tri._fwd_config(D, False, 90, fp32, alibi, causal)
                    # the fixed table's entry is the autotuner's first candidate
                    assert [tri._candidates(k, D, 90, fp32, alibi, causal)[0] for k in ("fwd", "dkdv", "dq")] == [cf, ck, cq]
                    every = [(c, keys) for kind, keys in (("fwd", fwd), ("dkdv", kv), ("dq", dq))
                             for c in tri._candidates(kind, D, 90, fp32, alibi, causal)]
                    for cfg, keys in every:
                        # HEAD_DIM only matters through EVEN_D (HEAD_DIM == BLOCK_D) and masks
                        Drep = bd if D == bd else tri._HEAD_DIMS[bd][1]
                        cons = dict(N_REP=1, HEAD_DIM=Drep, BLOCK_D=bd, BLOCK_M=cfg["BLOCK_M"],
                                    BLOCK_N=cfg["BLOCK_N"], CAUSAL=causal, HAS_ALIBI=alibi, IEEE=fp32)
                        key = (tuple(sorted(cons.items())), cfg["num_warps"], cfg["num_stages"])
                        assert key in keys, (D, dt, causal, alibi, cfg)


def test_attention_autotuner_configs():
    """On CUDA the launchers go through triton.autotune over _candidates (built lazily, never in
    the interpreter); the configs it holds are exactly the listed candidates."""
    from omicskern.ops.attention import triton as tri

    tuner = tri._tuned("fwd", tri._attention_fwd_kernel, 128, 90, False, False)
    got = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in tuner.configs]
    assert got == tri._candidates("fwd", 128, 90, False, False) and len(got) == 3
    assert not tri.autotune_enabled(torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_every_fftconv_plan_is_listed(dtype):
    """Every plan the dispatch can choose for inputs of ``dtype`` has its kernels in the compile list."""
    from omicskern.ops.fftconv import triton as tk

    listed = [la for la in tk.sm90_launches(full=True) if la["input_dtype"] == dtype]
    fused = {(la["constexprs"]["N1"], la["constexprs"]["N2"], la["num_warps"])
             for la in listed if la["kernel"] in ("fused", "dk_spectrum", "dk_inverse")}
    inner = {(la["constexprs"]["P"], la["constexprs"]["N1"], la["constexprs"]["N2"]) for la in listed
             if la["kernel"] == "inner"}
    outer = {(la["constexprs"]["P"], la["constexprs"]["M"], la["constexprs"]["BM"]) for la in listed
             if la["kernel"].startswith("outer")}
    for e in range(0, 21):
        for L in {(1 << e) - 1 or 1, 1 << e, (1 << e) + 1}:
            if L > tk.MAX_L:
                continue
            pl = tk.plan(L, dtype)
            if pl["fused"]:
                assert (pl["N1"], pl["N2"], tk._fused_warps(pl["N"], dtype == torch.float32)) in fused, L
                continue
            assert (pl["N"] // pl["M"], pl["N1"], pl["N2"]) in inner, L
            S = pl["N"]
            for P in pl["Ps"]:
                assert (P, S // P, tk._outer_bm(P, S // P)) in outer, (L, P)
                S //= P


def test_sm90_subset_compiles_without_spills_and_with_wgmma():
    mod = _check_module()
    if mod._toolchain() is None:
        pytest.skip("triton wheel without the CUDA toolchain (ptxas/cuobjdump)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--subset", "--out", "-", "--json", "-"],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert {row["op"] for row in rows} == set(mod.KERNEL_MODULES), "every registered op compiled"
    for row in rows:
        assert mod.problems(row) == [], row
        if row["mma_expected"] == "wgmma":
            assert row["mma"] == "wgmma", row
        if not row.get("known_spills"):
            assert row["spill_bytes"] == 0 and row["spill_instr"] == 0, row
    assert r.returncode == 0, r.stderr[-3000:]


def test_lazy_rescale_variant_still_applies():
    """benchmarks/sm90_lazy_rescale.py derives its variant from the shipped forward kernel by text
    edits; they must still apply (every edit found once) and give valid Python."""
    spec = importlib.util.spec_from_file_location("sm90_lazy_rescale", ROOT / "benchmarks" / "sm90_lazy_rescale.py")
    mod = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TRITON_INTERPRET")
    spec.loader.exec_module(mod)  # pops TRITON_INTERPRET (as the compile check does)
    if saved is not None:
        os.environ["TRITON_INTERPRET"] = saved
    src = mod.lazy_source()
    compile(src, "lazy_attention_fwd.py", "exec")
    assert src.count("LAZY: tl.constexpr") == 2 and "if LAZY:" in src and src.count("LAZY=LAZY") >= 4
