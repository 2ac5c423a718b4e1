"""Gated causal long convolution: omicskern ``fft_conv`` vs the torch.fft path as HyenaDNA computes it.

    y = (irfft(rfft(u, 2L) * rfft(k, 2L) / 2L)[..., :L] + D u) * gate      (HyenaDNA's fftconv + gate)

Shapes follow FlashFFTConv's table (B=64, H=768, L=256..32k) and long sequences (B=1, H=256, up
to 1M). Reports forward and forward+backward time (CUDA: median of ``triton.testing.do_bench``;
CPU: process CPU time on 1 thread, best of N, the machine being shared)
and peak memory (CUDA: max allocated beyond the inputs; CPU: peak RSS growth), side by side in one
process, with speedups. Writes a markdown table with the device name to ``benchmarks/results/``.

    python benchmarks/bench_fftconv.py            # full sizes (GPU)
    python benchmarks/bench_fftconv.py --quick    # CPU-sized, < 2 minutes
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, cuda_median_s, device_name, load_note  # first: puts this checkout on sys.path

from omicskern.ops.fftconv import fft_conv, fft_conv_hyenadna_ref  # noqa: E402


# ---------------------------------------------------------------------------------------------
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_mem(fn, dev) -> float:
    """Peak bytes beyond what was live before fn() (CUDA allocator stats; CPU: peak RSS growth)."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    if not _reset_peak_rss():
        return float("nan")
    base = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - base) * 1024.0


def times(fns: dict, dev, reps: int) -> dict:
    """Seconds per call for each fn. CUDA: median of triton.testing.do_bench. CPU: process CPU
    time, the methods interleaved rep after rep, best of reps: on a shared, oversubscribed
    machine wall time mostly measures waiting for a core."""
    if dev.type == "cuda":
        return {k: cuda_median_s(f, warmup=25, rep=100) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t0)
    return best


def run_case(B, H, L, dtype, dev, reps, backward):
    g = torch.Generator(device="cpu").manual_seed(0)
    u = torch.randn(B, H, L, generator=g).to(dev, dtype)
    gate = torch.randn(B, H, L, generator=g).to(dev, dtype)
    k = (torch.randn(H, L, generator=g) / L ** 0.5).to(dev)  # filters stay fp32 (as HyenaDNA's)
    D = torch.randn(H, generator=g).to(dev)
    methods = {
        "hyenadna": fft_conv_hyenadna_ref,  # HyenaDNA's standalone fftconv (rfft at 2L, fp32) + gate
        "omicskern": lambda u, k, D, gate: fft_conv(u, k, D, gate=gate),
    }
    leaves = [x.detach().requires_grad_(True) for x in (u, k, D, gate)]
    dy = torch.randn_like(u)
    fns = {}
    for name, f in methods.items():
        fns[(name, "fwd")] = torch.no_grad()(lambda f=f: f(u, k, D, gate))
        if backward:
            fns[(name, "bwd")] = lambda f=f: torch.autograd.grad(f(*leaves), leaves, dy)
    for f in fns.values():  # warm-up (plans, kernels)
        f()
    mem = {key: peak_mem(f, dev) for key, f in fns.items()}
    t = times(fns, dev, reps)
    out = {}
    for (name, mode), sec in t.items():
        out.setdefault(name, {})[f"{mode}_s"] = sec
        out[name][f"{mode}_mem"] = mem[(name, mode)]
    return out


def fmt_t(s):
    return f"{s * 1e3:.2f}" if s == s else "—"


def fmt_m(b):
    return f"{b / 2**20:.0f}" if b == b else "—"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized shapes, finishes in < 2 minutes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                    help="input/output dtype (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--out", default=None, help="markdown output path")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default 1 on CPU: on a shared machine, idle-spinning worker "
                         "threads make multi-threaded CPU time meaningless)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if dev.type == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        # large blocks through mmap, returned on free: RSS then tracks live tensors, so the
        # peak-RSS measurement sees each method's own peak rather than glibc's cached heap
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("bf16" if dev.type == "cuda" else "fp32")]
    if args.quick:
        cases = [(8, 64, L) for L in (256, 1000, 1024, 4096, 4097)] + [(1, 16, L) for L in (1 << 16, 1 << 18)]
        reps = 5
    else:
        cases = [(64, 768, 1 << p) for p in range(8, 16)] + [(1, 256, 1 << p) for p in range(16, 21)]
        reps = 10
    backward = not args.no_backward
    rows = []
    t_start = time.perf_counter()
    for B, H, L in cases:
        try:
            r = run_case(B, H, L, dtype, dev, reps, backward)
        except torch.OutOfMemoryError as e:  # report, keep going
            print(f"B={B} H={H} L={L}: out of memory ({str(e).splitlines()[0]})")
            r = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(((B, H, L), r))
        if r:
            h, o = r["hyenadna"], r["omicskern"]
            print(f"B={B:3d} H={H:4d} L={L:8d}  fwd {fmt_t(h['fwd_s'])} -> {fmt_t(o['fwd_s'])} ms "
                  f"({h['fwd_s'] / o['fwd_s']:.2f}x)" + (
                      f"  fwd+bwd {fmt_t(h['bwd_s'])} -> {fmt_t(o['bwd_s'])} ms "
                      f"({h['bwd_s'] / o['bwd_s']:.2f}x)" if backward else ""), flush=True)
    elapsed = time.perf_counter() - t_start
    name = device_name(dev)
    dname = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    lines = [
        f"# fft_conv benchmark ({'quick, ' if args.quick else ''}{dev.type})",
        "",
        f"Device: **{name}**; torch {torch.__version__}; dtype {dname} (filters fp32); "
        f"gated causal conv `(u * k + D u) * gate`; omicskern backend: default for the device "
        f"({'triton' if dev.type == 'cuda' else 'torch'}). Times in ms "
        f"({'median, triton.testing.do_bench' if dev.type == 'cuda' else f'process CPU time, best of {reps} interleaved runs after a warm-up'}); "
        f"memory is peak MiB beyond the inputs "
        f"({'max_memory_allocated' if dev.type == 'cuda' else 'process peak RSS growth, approximate'}). "
        f"Speedup = HyenaDNA torch.fft time / omicskern time. Total run {elapsed:.0f} s. " + load_note(),
        "",
        "| B | H | L | fwd HyenaDNA | fwd omicskern | speedup | fwd+bwd HyenaDNA | fwd+bwd omicskern | speedup "
        "| mem fwd HyenaDNA | mem fwd omicskern | mem fwd+bwd HyenaDNA | mem fwd+bwd omicskern |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (B, H, L), r in rows:
        if r is None:
            lines.append(f"| {B} | {H} | {L} | OOM | | | | | | | | | |")
            continue
        h, o = r["hyenadna"], r["omicskern"]
        hb, ob = h.get("bwd_s", float("nan")), o.get("bwd_s", float("nan"))
        lines.append(
            f"| {B} | {H} | {L} | {fmt_t(h['fwd_s'])} | {fmt_t(o['fwd_s'])} | {h['fwd_s'] / o['fwd_s']:.2f}x "
            f"| {fmt_t(hb)} | {fmt_t(ob)} | {hb / ob:.2f}x | {fmt_m(h['fwd_mem'])} | {fmt_m(o['fwd_mem'])} "
            f"| {fmt_m(h.get('bwd_mem', float('nan')))} | {fmt_m(o.get('bwd_mem', float('nan')))} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else RESULTS / (
        f"fftconv_{dev.type}{'_quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
