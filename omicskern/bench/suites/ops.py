"""Ops: attention (every backend real on the device vs SDPA with a bias-tensor ALiBi and eager
attention) and the gated causal long convolution ``fft_conv`` (vs torch.fft in HyenaDNA's
formulation), forward and forward+backward, interleaved in one process. Folds in the former
``benchmarks/bench_attention.py`` and ``benchmarks/bench_fftconv.py`` (same shapes)."""

from __future__ import annotations

import torch

from omicskern.bench.cases import ab_records, memory_record, status_record
from omicskern.bench.runner import Context
from omicskern.bench.suites import _attn
from omicskern.bench.timing import interleaved, peak_memory, pinned_threads

FFT_DESCS = {
    "omicskern fft_conv": "omicskern fft_conv, default backend for the device (CPU: torch; CUDA: triton), "
                          "bias and gate fused",
    "torch.fft (HyenaDNA)": "baseline: HyenaDNA's fftconv (rfft/irfft at 2L in fp32, + D u) then the gate, "
                            "as separate torch ops",
}


def _fn(call, mode, leaves, dout):
    if mode == "fwd":
        def f():
            with torch.no_grad():
                call()
    else:
        def f():
            torch.autograd.grad(call(), leaves, dout)
    return f


def attention_cases(ctx: Context) -> list[dict]:
    dev = ctx.device
    dtype = torch.float32 if not ctx.cuda else torch.bfloat16
    seqs = ctx.pick([64], [128, 512], [512, 1024, 2048, 4096, 8192, 16384])
    D = ctx.pick(32, 64, 128)
    H = ctx.pick(2, 4, 16)
    total = ctx.pick(128, 1024, 16384)  # tokens per batch fixed (FlashAttention's convention)
    unit, scale = ("TFLOP/s", 1e12) if ctx.cuda else ("GFLOP/s", 1e9)
    out = []
    for L in seqs:
        B = max(1, total // L)
        # (causal, alibi); tiny dry runs take two of the four
        combos = [(c, a) for c in (False, True) for a in (False, True)]
        combos = [combos[0], combos[3]] if ctx.tiny else combos
        for causal, alibi in combos:
            for mode in ("fwd", "fwd+bwd"):
                g = torch.Generator(device="cpu").manual_seed(0)
                q, k, v, do = (torch.randn(B, L, H, D, generator=g).to(dev, dtype) for _ in range(4))
                leaves = [t.requires_grad_(mode == "fwd+bwd") for t in (q, k, v)]
                slopes = None
                if alibi:
                    from omicskern.ops.attention import alibi_slopes

                    slopes = alibi_slopes(H).to(dev)
                names = _attn.impls(dev, alibi)
                fns = {n: _fn(_attn.make_call(n, *leaves, causal, slopes), mode, leaves, do) for n in names}
                t = interleaved(fns, device=dev, repeats=ctx.repeats, budget_s=ctx.budget_s * len(fns))
                params = dict(B=B, L=L, H=H, D=D, causal=causal, alibi=alibi, mode=mode,
                              dtype=str(dtype).replace("torch.", ""))
                out += ab_records("attention", params, t, _attn.DESCS, "sdpa+bias", "throughput", unit,
                                  per=_attn.flops(B, L, H, D, causal, mode), scale=scale, rate=True,
                                  note=None if ctx.cuda else "CPU: Triton runs only in the interpreter here "
                                  "(not a speed measure), so omicskern runs its sdpa path")
    return out


def fftconv_cases(ctx: Context) -> list[dict]:
    from omicskern.ops.fftconv import fft_conv, fft_conv_hyenadna_ref

    dev = ctx.device
    dtype = torch.float32 if not ctx.cuda else torch.bfloat16
    cases = ctx.pick([(1, 4, 1000)],
                     [(8, 64, L) for L in (256, 1000, 1024, 4096, 4097)] + [(1, 16, L) for L in (1 << 16, 1 << 18)],
                     [(64, 768, 1 << p) for p in range(8, 16)] + [(1, 256, 1 << p) for p in range(16, 21)])
    out = []
    for B, H, L in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        u = torch.randn(B, H, L, generator=g).to(dev, dtype)
        gate = torch.randn(B, H, L, generator=g).to(dev, dtype)
        k = (torch.randn(H, L, generator=g) / L ** 0.5).to(dev)  # filters stay fp32 (as HyenaDNA's)
        Dv = torch.randn(H, generator=g).to(dev)
        dy = torch.randn(B, H, L, generator=g).to(dev, dtype)
        methods = {"omicskern fft_conv": lambda u, k, D, gate: fft_conv(u, k, D, gate=gate),
                   "torch.fft (HyenaDNA)": fft_conv_hyenadna_ref}
        params = dict(B=B, H=H, L=L, dtype=str(dtype).replace("torch.", ""))
        for mode in ("fwd", "fwd+bwd"):
            leaves = [x.detach().requires_grad_(mode == "fwd+bwd") for x in (u, k, Dv, gate)]
            fns = {n: _fn(lambda f=f: f(*leaves), mode, leaves, dy) for n, f in methods.items()}
            try:
                t = interleaved(fns, device=dev, repeats=ctx.repeats, budget_s=ctx.budget_s * 2)
            except torch.OutOfMemoryError as e:
                out += [status_record("fft_conv", {**params, "mode": mode}, n, "time", "ms", "oom",
                                      str(e).splitlines()[0]) for n in fns]
                continue
            out += ab_records("fft_conv", {**params, "mode": mode}, t, FFT_DESCS, "torch.fft (HyenaDNA)", "time",
                              "ms", scale=1e3)
            mems = {n: peak_memory(f, device=dev, method=ctx.mem_method) for n, f in fns.items()}
            base_b = mems["torch.fft (HyenaDNA)"][0]
            for n, (b, method) in mems.items():
                out.append(memory_record("fft_conv peak memory", {**params, "mode": mode}, n, b, method,
                                         FFT_DESCS[n], *(("torch.fft (HyenaDNA)", base_b)
                                                         if n != "torch.fft (HyenaDNA)" else (None, None))))
    return out


def run(ctx: Context) -> list[dict]:
    # CPU: one thread, process CPU time; both implementations of a row see the same load
    with pinned_threads(1 if not ctx.cuda else None):
        return attention_cases(ctx) + fftconv_cases(ctx)
