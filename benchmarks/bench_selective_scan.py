"""Selective scan (Mamba S6): omicskern's ``selective_scan`` vs mamba_ssm's ``selective_scan_ref``.

The reference path is mamba_ssm 1.2.0.post1's pure-PyTorch ``selective_scan_ref`` re-stated
below (:func:`mamba_selective_scan_ref`): ``deltaA = exp(einsum(delta, A))`` and ``deltaB_u`` for
all L at once ``[B, D, L, N]``, then a Python loop over L. It is what mamba's own tests check the
CUDA kernel against and what runs wherever ``selective_scan_cuda`` cannot be built (every CPU).
omicskern runs its default backend for the device (CPU: the exact chunked ``torch`` scan).

Shapes are Caduceus' (variable B/C, D skip, z gate, delta bias + softplus, fp32): d_inner 128
(Caduceus-tiny, d_model 64) and 512 (the released d_model 256), N = 16, B = 1, L = 1k .. 131k.
Reports forward and forward+backward time (CPU: process CPU time on 1 thread, best of N
interleaved runs; CUDA: median of ``triton.testing.do_bench``) and peak memory (CUDA allocator
peak; CPU: peak RSS growth), plus Caduceus-tiny (the fixture's PS model) on one 131k-token row.

    python benchmarks/bench_selective_scan.py --quick   # CPU-sized (L to 16k), plus Caduceus-tiny at 131k
    python benchmarks/bench_selective_scan.py           # L up to 131k (the reference's fwd+bwd to 4k)

``run(quick)`` returns the rows as dicts, for the ``omicskern bench`` suite.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import RESULTS, SHARED, cuda_median_s, device_name, load_note  # first: puts this checkout on sys.path

from omicskern.ops.selective_scan import selective_scan  # noqa: E402


def mamba_selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm 1.2.0.post1 ``selective_scan_ref``, real A, variable B/C ``[B, N, L]``: fp32,
    the decays and inputs of every step materialised, then one Python iteration per position."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B, C = B.float(), C.float()
    x = A.new_zeros((batch, dim, dstate))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in)


# ---------------------------------------------------------------------------------------------
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_mem(fn, dev) -> float:
    """Peak bytes beyond what was live before fn() (CUDA allocator; CPU: peak RSS growth)."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except OSError:
        return float("nan")
    base = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - base) * 1024.0


def times(fns: dict, dev, reps: int) -> dict:
    """CUDA: do_bench medians. CPU: process CPU time, methods interleaved, best of reps."""
    if dev.type == "cuda":
        return {k: cuda_median_s(f, warmup=10, rep=50) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t0)
    return best


def make_inputs(dim, L, N, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(1, dim, L), delta=r(1, dim, L) * 0.5, A=-torch.exp(torch.log(torch.arange(1, N + 1.0)) + 0.2 * r(dim, N)),
             B=r(1, N, L), C=r(1, N, L), D=r(dim), z=r(1, dim, L), delta_bias=r(dim) - 3.0)
    return {k: v.to(dev) for k, v in x.items()}


def run_scan_case(dim, L, N, dev, reps, with_ref_bwd, with_ref=True):
    x = make_inputs(dim, L, N, dev)
    methods = {"omicskern": lambda **k: selective_scan(**k, delta_softplus=True)}
    if with_ref:
        methods["mamba_ref"] = lambda **k: mamba_selective_scan_ref(**k, delta_softplus=True)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    dy = torch.randn_like(x["u"])
    fns = {}
    for name, f in methods.items():
        fns[(name, "fwd")] = torch.no_grad()(lambda f=f: f(**x))
        if name == "omicskern" or with_ref_bwd:
            fns[(name, "bwd")] = lambda f=f: torch.autograd.grad(f(**leaves), list(leaves.values()), dy)
    # the reference's backward (autograd through L Python steps) runs once: its peak-memory run,
    # timed; everything else: a warm-up/peak-memory run, then best of `reps` interleaved
    slow = {k: fns.pop(k) for k in [("mamba_ref", "bwd")] if k in fns}
    mem = {key: peak_mem(f, dev) for key, f in fns.items()}
    t = times(fns, dev, reps)
    for key, f in slow.items():
        t0 = time.process_time()
        mem[key] = peak_mem(f, dev)
        t[key] = time.process_time() - t0
    row = dict(op="selective_scan", B=1, D=dim, L=L, N=N)
    for (name, mode), sec in t.items():
        row[f"{name}_{mode}_s"] = sec
        row[f"{name}_{mode}_mem"] = mem[(name, mode)]
    return row


def run_caduceus_131k(dev, reps=1):
    """The fixture's Caduceus-tiny PS model (d_model 64, 2 layers) on one 131072-token row."""
    from omicskern.batch import Batch
    from omicskern.models import Caduceus

    folder = SHARED / "fixtures" / "caduceus_tiny"
    if not (folder / "model.safetensors").is_file():
        return None
    model = Caduceus.from_pretrained(folder, device=dev)
    L = 131072
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 11, (L,), generator=g, dtype=torch.int32)
    batch = Batch(ids.numpy(), [0, L])
    fn = lambda: model.embed(batch)  # noqa: E731
    model.embed(Batch(ids[:4096].numpy(), [0, 4096]))  # warm-up
    t0 = time.process_time()
    mem = peak_mem(fn, dev)  # one run, timed (on CUDA: do_bench below)
    t = time.process_time() - t0 if dev.type == "cpu" else times({"embed": fn}, dev, reps)["embed"]
    return dict(op="caduceus_tiny_embed", B=1, L=L, D=128, N=16, omicskern_fwd_s=t, omicskern_fwd_mem=mem)


def run(quick: bool, device: str | None = None, log=print, scans: bool = True, model: bool = True) -> list[dict]:
    """Measure; one dict per row (times in s, memory in bytes; absent = not run)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not scans:
        cases = []
    elif quick:
        cases = [(128, L, False) for L in (1024, 4096, 16384)] + [(512, 4096, False)]
        ref_bwd_max, reps = 1024, 3
    else:
        cases = [(128, L, False) for L in (1024, 4096, 16384, 32768, 131072)] + \
                [(512, L, False) for L in (4096, 32768)]
        ref_bwd_max, reps = 4096, 3
    rows = []
    for dim, L, _ in cases:
        r = run_scan_case(dim, L, 16, dev, reps if L <= 32768 else 1, L <= ref_bwd_max)
        rows.append(r)
        log(_line(r), flush=True)
    r = run_caduceus_131k(dev) if model else None  # quick mode too: 131k tokens is the point of the CPU path
    if r is not None:
        rows.append(r)
        log(f"Caduceus-tiny 131k: {r['omicskern_fwd_s']:.2f} s, {r['omicskern_fwd_mem'] / 2**20:.0f} MiB", flush=True)
    return rows


def _ms(s):
    return "—" if s is None or s != s else (f"{s * 1e3:.1f}" if s < 10 else f"{s:.1f} s")


def _mib(b):
    return "—" if b is None or b != b else f"{b / 2**20:.0f}"


def _ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.1f}x"


def _line(r):
    return (f"D={r['D']:4d} L={r['L']:7d}  fwd ref {_ms(r.get('mamba_ref_fwd_s'))} -> {_ms(r['omicskern_fwd_s'])} ms "
            f"({_ratio(r.get('mamba_ref_fwd_s'), r['omicskern_fwd_s'])})  fwd+bwd ref {_ms(r.get('mamba_ref_bwd_s'))} "
            f"-> {_ms(r['omicskern_bwd_s'])} ({_ratio(r.get('mamba_ref_bwd_s'), r['omicskern_bwd_s'])})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--model-only", action="store_true", help="only Caduceus-tiny at 131k tokens")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default 1: the machine is shared)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if dev.type == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # RSS tracks live tensors (see bench_fftconv)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    note = load_note()
    t0 = time.perf_counter()
    rows = run(args.quick, str(dev), scans=not args.model_only)
    elapsed = time.perf_counter() - t0
    backend = "triton" if dev.type == "cuda" else "torch"
    lines = [
        f"# selective_scan benchmark ({'quick, ' if args.quick else ''}{dev.type})", "",
        f"Device: **{device_name(dev)}**; torch {torch.__version__}; fp32; B = 1, N = 16, variable B/C, D, z, "
        f"delta bias + softplus (Caduceus' call). omicskern backend: {backend}. Reference: mamba_ssm 1.2.0.post1 "
        f"`selective_scan_ref` (materialised `deltaA`, Python loop over L). Times: "
        f"{'median, triton.testing.do_bench' if dev.type == 'cuda' else 'process CPU time, best of interleaved runs (1 at L = 131k)'}; "
        f"memory: peak MiB beyond the inputs ({'allocator' if dev.type == 'cuda' else 'peak RSS growth, approximate'}); "
        f"fwd+bwd = gradients of every input (the reference's: one timed run, too slow to repeat). Speedup = reference / omicskern. Total run {elapsed:.0f} s. {note}",
        "",
        "| D | L | fwd ref | fwd omicskern | speedup | fwd+bwd ref | fwd+bwd omicskern | speedup | mem fwd ref "
        "| mem fwd omicskern | mem fwd+bwd ref | mem fwd+bwd omicskern |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not any(r["op"] == "selective_scan" for r in rows):
        lines = lines[:-3]  # --model-only: no scan table
    for r in rows:
        if r["op"] != "selective_scan":
            continue
        g = r.get
        lines.append(f"| {r['D']} | {r['L']} | {_ms(g('mamba_ref_fwd_s'))} | {_ms(g('omicskern_fwd_s'))} | "
                     f"{_ratio(g('mamba_ref_fwd_s'), g('omicskern_fwd_s'))} | {_ms(g('mamba_ref_bwd_s'))} | "
                     f"{_ms(g('omicskern_bwd_s'))} | {_ratio(g('mamba_ref_bwd_s'), g('omicskern_bwd_s'))} | "
                     f"{_mib(g('mamba_ref_fwd_mem'))} | {_mib(g('omicskern_fwd_mem'))} | {_mib(g('mamba_ref_bwd_mem'))} "
                     f"| {_mib(g('omicskern_bwd_mem'))} |")
    cad = [r for r in rows if r["op"] == "caduceus_tiny_embed"]
    if cad:
        r = cad[0]
        lines += ["", f"Caduceus-tiny (the fixture's PS model: d_model 64, 2 layers, both strands, BiMamba: 8 scans "
                      f"of d_inner 128) on one 131072-token row, `model.embed`: **{r['omicskern_fwd_s']:.1f} s**, "
                      f"peak memory {_mib(r['omicskern_fwd_mem'])} MiB ({backend} backends)."]
    lines += ["", "mamba_ssm's CUDA kernel was not compared: no GPU was available to this run."
              if dev.type == "cpu" else ""]
    text = "\n".join(lines) + "\n"
    suffix = "_model" if args.model_only else ("_quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"selective_scan_{dev.type}{suffix}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
