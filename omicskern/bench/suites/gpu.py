"""The GPU check (H100/H200, <= 8 minutes): attention at B4/L4k/H16/D128 bf16 (omicskern triton
vs SDPA flash / cuDNN / bias-tensor ALiBi vs flash-attn, with a max-error check against SDPA math
in fp32) and a block-size sweep of the Triton kernels; ``fft_conv`` at L = 1k, 4k, 32k (B64
H768) and 1M (B1 H256) vs torch.fft in HyenaDNA's formulation (speed-up and achieved bandwidth
of the minimal traffic); the model throughputs (the models suite at full size); the
``gpu``-marked tests. Without a CUDA device it dry-runs on CPU at tiny sizes through the Triton
interpreter: every path is exercised, no figure means anything (records say so).

Supersedes ``../shared/gpu/gpu_bench.py`` (the reference written for this project); run it
through ``benchmarks/gpu_check.sh`` on a lent machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import torch

if not torch.cuda.is_available():  # dry run: the kernels through the interpreter (set before they import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from omicskern.bench.cases import ab_records, status_record  # noqa: E402
from omicskern.bench.runner import ROOT, Context  # noqa: E402
from omicskern.bench.suites import _attn  # noqa: E402
from omicskern.bench.timing import measure  # noqa: E402

DRY_NOTE = "DRY RUN on CPU (Triton interpreter, tiny shapes): exercises the path, the figure means nothing"
FWD_SWEEP = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages); the first is the shipped sm_90 D=128 entry
    (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (128, 32, 8, 3)]
BWD_SWEEP = [  # ((dK/dV kernel), (dQ kernel)); the first is the shipped sm_90 D=128 entry
    ((64, 64, 8, 2), (64, 32, 4, 3)), ((64, 64, 8, 2), (128, 64, 8, 2)), ((64, 128, 8, 2), (128, 64, 8, 2)),
    ((32, 128, 4, 3), (128, 32, 4, 3))]
SDPA_DESCS = {"sdpa-flash": "baseline: torch SDPA, FLASH_ATTENTION backend (no ALiBi support)",
              "sdpa-cudnn": "baseline: torch SDPA, CUDNN_ATTENTION backend",
              "sdpa-bias(eff)": "baseline: torch SDPA EFFICIENT_ATTENTION with ALiBi as a [1,H,L,L] bias tensor"}


def _dry(ctx: Context) -> bool:
    return not ctx.cuda


def _sdpa(q, k, v, bias, causal, backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        if bias is not None and causal:
            L = q.shape[-2]
            bias = bias + torch.full((L, L), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal and bias is None)


def attention_section(ctx: Context) -> list[dict]:
    from torch.nn.attention import SDPBackend

    from omicskern.ops import backends
    from omicskern.ops.attention import alibi_slopes, attention

    dry = _dry(ctx)
    dev = ctx.device if not dry else "cpu"
    dt = torch.float16 if dry else torch.bfloat16  # the interpreter's bf16 tl.dot is wrong
    B, L, H, D = (1, 32, 1, 64) if dry else (4, 4096, 16, 128)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, do = (torch.randn(B, L, H, D, generator=g).to(dev, dt) for _ in range(4))
    qh, kh, vh, doh = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    sl = alibi_slopes(H).to(dev)
    bias = _attn.alibi_bias(sl, L, False, dt)
    out = []
    note = DRY_NOTE if dry else None
    for variant, causal, alibi in (("bidirectional", False, False), ("causal", True, False), ("ALiBi", False, True)):
        params = dict(B=B, L=L, H=H, D=D, dtype=str(dt).replace("torch.", ""), variant=variant)
        got = attention(q, k, v, causal=causal, alibi_slopes=sl if alibi else None, backend="triton")
        ref = torch.nn.functional.scaled_dot_product_attention(
            qh[:1].float(), kh[:1].float(), vh[:1].float(), attn_mask=bias.float() if alibi else None,
            is_causal=causal).transpose(1, 2)
        err = (got[:1].float() - ref).abs().max().item()
        out.append(dict(case="attention max error vs SDPA math fp32", params=params, impl="omicskern triton",
                        metric="max_abs_err", unit="abs", value=err, better="lower", repeats=1,
                        status="ok" if err < 2e-2 else "error", note=note or ("" if err < 2e-2 else "LARGE error")))
        for mode in ("fwd", "fwd+bwd"):
            s = sl if alibi else None
            cands = {"omicskern triton": (lambda a, b, c: attention(a, b, c, causal=causal, alibi_slopes=s,
                                                                     backend="triton"), (q, k, v), do)}
            if not dry:
                if not alibi:
                    cands["sdpa-flash"] = (lambda a, b, c: _sdpa(a, b, c, None, causal, SDPBackend.FLASH_ATTENTION),
                                           (qh, kh, vh), doh)
                    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
                        cands["sdpa-cudnn"] = (lambda a, b, c: _sdpa(a, b, c, None, causal,
                                                                     SDPBackend.CUDNN_ATTENTION), (qh, kh, vh), doh)
                else:
                    cands["sdpa-bias(eff)"] = (lambda a, b, c: _sdpa(a, b, c, bias, causal,
                                                                     SDPBackend.EFFICIENT_ATTENTION), (qh, kh, vh), doh)
                if backends.has_flash_attn():
                    from flash_attn import flash_attn_func

                    cands["flash_attn"] = (lambda a, b, c: flash_attn_func(a, b, c, causal=causal, alibi_slopes=s),
                                           (q, k, v), do)
            else:
                cands["sdpa (CPU)"] = (lambda a, b, c: _sdpa(a, b, c, bias if alibi else None, causal,
                                                             SDPBackend.MATH), (qh, kh, vh), doh)
            timings = {}
            for name, (call, ins, dout) in cands.items():
                leaves = [t.detach().requires_grad_(mode == "fwd+bwd") for t in ins]
                if mode == "fwd":
                    def f(call=call, leaves=leaves):
                        with torch.no_grad():
                            call(*leaves)
                else:
                    def f(call=call, leaves=leaves, dout=dout):
                        torch.autograd.grad(call(*leaves), leaves, dout)
                try:
                    timings[name] = measure(f, device=dev, repeats=2 if dry else 50, min_repeats=1,
                                            budget_s=0.0 if dry else 1.0)
                except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape is reported
                    out.append(status_record("attention", {**params, "mode": mode}, name, "throughput", "TFLOP/s",
                                             "error", f"{type(e).__name__}: {str(e)[:200]}"))
            base = next((b for b in ("sdpa-flash", "sdpa-bias(eff)", "sdpa (CPU)") if b in timings), None)
            out += ab_records("attention", {**params, "mode": mode}, timings, {**_attn.DESCS, **SDPA_DESCS,
                              "sdpa (CPU)": "dry run: SDPA math on CPU"}, base, "throughput", "TFLOP/s",
                              per=_attn.flops(B, L, H, D, causal, mode), scale=1e12, rate=True, note=note)
    out += sweep(ctx, q, k, v, do, B, L, H, D, dev, dry, note)
    return out


def sweep(ctx, q, k, v, do, B, L, H, D, dev, dry, note) -> list[dict]:
    """The Triton kernels' launch configurations at the target shape (the shipped entry first)."""
    from omicskern.ops.attention import attention
    from omicskern.ops.attention import triton as tri

    out = []
    fwd0, bwd0 = tri._fwd_config, tri._bwd_config
    configs = FWD_SWEEP[:1] if dry else FWD_SWEEP
    try:
        for causal in ((False,) if dry else (False, True)):
            for cfg in configs:
                tri._fwd_config = lambda *a, _c=cfg, **kw: dict(BLOCK_M=_c[0] if not dry else 32,
                                                               BLOCK_N=_c[1] if not dry else 16,
                                                               num_warps=_c[2], num_stages=_c[3])

                def f():
                    with torch.no_grad():
                        attention(q, k, v, causal=causal, backend="triton")
                try:
                    t = measure(f, device=dev, repeats=1 if dry else 50, min_repeats=1, budget_s=0.0 if dry else 1.0)
                    out += ab_records("attention block sweep (fwd)", dict(B=B, L=L, H=H, D=D, causal=causal,
                                      config="BM,BN,w,s=" + ",".join(map(str, cfg))), {"omicskern triton": t},
                                      _attn.DESCS, None, "throughput", "TFLOP/s",
                                      per=_attn.flops(B, L, H, D, causal, "fwd"), scale=1e12, rate=True, note=note)
                except Exception as e:  # noqa: BLE001
                    out.append(status_record("attention block sweep (fwd)", dict(config=str(cfg), causal=causal),
                                             "omicskern triton", "throughput", "TFLOP/s", "error",
                                             f"{type(e).__name__}: {str(e)[:200]}"))
        tri._fwd_config = fwd0
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        for kvc, qc in (BWD_SWEEP[:1] if dry else BWD_SWEEP):
            def mk(c):
                return dict(BLOCK_M=c[0] if not dry else 16, BLOCK_N=c[1] if not dry else 16, num_warps=c[2],
                            num_stages=c[3])
            tri._bwd_config = lambda *a, _kv=kvc, _q=qc, **kw: (mk(_kv), mk(_q))

            def f():
                torch.autograd.grad(attention(*leaves, backend="triton"), leaves, do)
            try:
                t = measure(f, device=dev, repeats=1 if dry else 30, min_repeats=1, budget_s=0.0 if dry else 1.0)
                out += ab_records("attention block sweep (fwd+bwd)", dict(B=B, L=L, H=H, D=D, causal=False,
                                  config=f"kv={kvc} q={qc}"), {"omicskern triton": t}, _attn.DESCS, None,
                                  "throughput", "TFLOP/s", per=_attn.flops(B, L, H, D, False, "fwd+bwd"), scale=1e12,
                                  rate=True, note=note)
            except Exception as e:  # noqa: BLE001
                out.append(status_record("attention block sweep (fwd+bwd)", dict(config=f"kv={kvc} q={qc}"),
                                         "omicskern triton", "throughput", "TFLOP/s", "error",
                                         f"{type(e).__name__}: {str(e)[:200]}"))
    finally:
        tri._fwd_config, tri._bwd_config = fwd0, bwd0
    return out


def fftconv_section(ctx: Context) -> list[dict]:
    from omicskern.ops.fftconv import fft_conv, fft_conv_hyenadna_ref

    dry = _dry(ctx)
    dev = ctx.device if not dry else "cpu"
    dt = torch.float16 if dry else torch.bfloat16
    cases = [(1, 2, 1024)] if dry else [(64, 768, 1024), (64, 768, 4096), (64, 768, 32768),
                                                      (1, 256, 1 << 20)]
    descs = {"omicskern fft_conv (triton)": "omicskern fft_conv, Triton backend (Monarch FFT, bias and gate fused)",
             "torch.fft (HyenaDNA)": "baseline: HyenaDNA's fftconv (rfft/irfft at 2L, fp32) + gate as separate ops"}
    out = []
    for B, H, L in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        u, gate = (torch.randn(B, H, L, generator=g).to(dev, dt) for _ in range(2))
        k = (torch.randn(H, L, generator=g) / math.sqrt(L)).to(dev)
        Dv = torch.randn(H, generator=g).to(dev)
        params = dict(B=B, H=H, L=L, dtype=str(dt).replace("torch.", ""))
        with torch.no_grad():
            ref = fft_conv_hyenadna_ref(u, k, Dv, gate).float()
            try:
                y = fft_conv(u, k, Dv, gate=gate, backend="triton").float()
                err = ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                out.append(dict(case="fft_conv max rel error vs torch.fft", params=params,
                                impl="omicskern fft_conv (triton)", metric="max_rel_err", unit="rel", value=err,
                                better="lower", repeats=1, note=DRY_NOTE if dry else None))
                fns = {"omicskern fft_conv (triton)": lambda: fft_conv(u, k, Dv, gate=gate, backend="triton"),
                       "torch.fft (HyenaDNA)": lambda: fft_conv_hyenadna_ref(u, k, Dv, gate)}
                t = {n: measure(f, device=dev, repeats=1 if dry else 50, min_repeats=1, budget_s=0.0 if dry else 1.0)
                     for n, f in fns.items()}
            except Exception as e:  # noqa: BLE001
                out.append(status_record("fft_conv", params, "omicskern fft_conv (triton)", "time", "ms", "error",
                                         f"{type(e).__name__}: {str(e)[:200]}"))
                continue
        out += ab_records("fft_conv", params, t, descs, "torch.fft (HyenaDNA)", "time", "ms", scale=1e3,
                          note=DRY_NOTE if dry else None)
        min_bytes = B * H * L * 2 * 3  # u read, gate read, y written: the floor of any implementation
        out += ab_records("fft_conv bandwidth (minimal traffic)", params, t, descs, "torch.fft (HyenaDNA)",
                          "bandwidth", "GB/s", per=min_bytes, scale=1e9, rate=True, note=DRY_NOTE if dry else None)
        del u, gate, k, ref
        if not dry:
            torch.cuda.empty_cache()
    return out


def tests_section(ctx: Context, timeout_s: int = 170) -> list[dict]:
    if _dry(ctx):
        return [status_record("gpu-marked tests", {}, "pytest -m gpu", "passed", "tests", "skipped",
                              "no CUDA device: the gpu-marked tests skip here")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                            "tests/ops", "tests/modules", "tests/models"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout_s)
        tail = (p.stdout.strip().splitlines() or ["?"])[-1]
        status = "ok" if p.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        tail, status = f"timed out after {timeout_s} s", "error"
    import re

    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    return [dict(case="gpu-marked tests", params={}, impl="pytest -m gpu", metric="passed", unit="tests",
                 value=passed, repeats=1, clock="wall", wall_median_s=time.perf_counter() - t0, status=status,
                 note=tail[:300])]


def models_section(ctx: Context) -> list[dict]:
    from omicskern.bench.runner import Context as C
    from omicskern.bench.suites import models

    if _dry(ctx):
        return [status_record("models (section)", {}, "-", "throughput", "tokens/s", "skipped",
                              "dry run: the models suite's own tiny run covers this path")]
    return models.run(C(size="full", device=ctx.device, log=ctx.log))


SECTIONS = (("attention", attention_section), ("fft_conv", fftconv_section), ("models", models_section),
            ("tests", tests_section))


def run(ctx: Context) -> list[dict]:
    """Every section in turn; one that fails becomes an ``error`` record and the others still run."""
    out = []
    if _dry(ctx):
        ctx.log("gpu suite: " + DRY_NOTE)
    only = [x for x in os.environ.get("OMICSKERN_GPU_SECTIONS", "").split(",") if x]
    unknown = set(only) - {n for n, _ in SECTIONS}
    if unknown:
        raise ValueError(f"OMICSKERN_GPU_SECTIONS: unknown section(s) {sorted(unknown)} "
                         f"(choose from {', '.join(n for n, _ in SECTIONS)})")
    for name, fn in SECTIONS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            out += fn(ctx)
        except Exception as e:  # noqa: BLE001
            out.append(status_record(f"{name} (section)", {}, "-", "-", "-", "error",
                                     f"{type(e).__name__}: {str(e)[:300]}"))
        ctx.log(f"gpu suite: {name} {time.perf_counter() - t0:.0f} s")
        if ctx.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return out
