"""Attention benchmark: every available backend side by side, forward and forward+backward.

Reports TFLOP/s (useful FLOPs only: padding is not counted, causal counts half) and peak memory,
for bidirectional/causal, with/without ALiBi, head dim 64/128, seq 512..16k (total tokens fixed at
16k per batch, FlashAttention's convention), plus a variable-length batch whose lengths look like
BPE-tokenized 1-10 kbp DNA (DNABERT-2: ~5 bp/token -> 200..2000 tokens), run packed (varlen) vs
padded with a key mask. Backends: omicskern ``triton``, ``flash_attn`` (if installed), ``sdpa``
(torch SDPA; ALiBi/padding as an explicit additive bias tensor, what DNABERT-2 users fall back
to), ``torch`` (plain PyTorch math in the input dtype, materialising the score matrix).

    python benchmarks/bench_attention.py            # GPU: bf16, full grid (minutes)
    python benchmarks/bench_attention.py --quick    # CPU or GPU: small sizes (< 2 min on CPU)

Writes ``benchmarks/results/attention_<device>.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import ROOT, cuda_median_s, device_name, slug, wall_median_s, load_note  # first: puts this checkout on sys.path

from omicskern.ops import backends  # noqa: E402
from omicskern.ops.attention import alibi_slopes, attention, attention_ref  # noqa: E402


def bench(fn, dev: str, reps: int) -> float:
    """Median seconds per call (CPU: wall time after one warm-up call)."""
    if dev == "cuda":
        return cuda_median_s(fn, warmup=25, rep=100)
    return wall_median_s(fn, reps, warmup=1)


def flops_fwd(lens, H, D, causal):
    f = sum(4 * n * n * H * D for n in lens)
    return f / 2 if causal else f


def run_case(backend, lens, layout, H, D, dtype, causal, alibi, mode, dev, reps):
    """Seconds per call and peak memory (bytes, CUDA only) for one configuration."""
    B, L = len(lens), max(lens)
    g = torch.Generator(device=dev).manual_seed(0)
    slopes = alibi_slopes(H).to(dev) if alibi else None
    if layout == "varlen":
        T = sum(lens)
        shape = (T, H, D)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
        kw = dict(cu_seqlens=cu, max_seqlen=L)
    else:
        shape = (B, L, H, D)
        kw = {}
        if any(n != L for n in lens):
            kw["key_padding_mask"] = torch.arange(L, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
    q, k, v = (torch.randn(shape, generator=g, device=dev, dtype=dtype).requires_grad_(mode == "fwd+bwd")
               for _ in range(3))
    do = torch.randn(shape, generator=g, device=dev, dtype=dtype)

    if backend == "torch":
        def call():
            return attention_ref(q, k, v, causal=causal, alibi_slopes=slopes, upcast=False, **kw)
    else:
        def call():
            return attention(q, k, v, causal=causal, alibi_slopes=slopes, backend=backend, **kw)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call()
    else:
        def fn():
            torch.autograd.grad(call(), (q, k, v), do)

    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    try:
        fn()  # compile/warm up, and measure the peak of one call
        peak = torch.cuda.max_memory_allocated() - base if dev == "cuda" else None
        sec = bench(fn, dev, reps)
    except torch.OutOfMemoryError:
        return None, "OOM"
    finally:
        del q, k, v, do
    return sec, peak


def bpe_like_lengths(n_seqs: int, lo_tok: int, hi_tok: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(lo_tok, hi_tok + 1, (n_seqs,), generator=g)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU-friendly)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="output markdown path")
    ap.add_argument("--backends", default=None, help="comma-separated subset")
    args = ap.parse_args(argv)
    dev = args.device

    avail = ["torch", "sdpa"]
    if backends.triton_probe(dev) is None and dev == "cuda":  # the interpreter says nothing about speed
        avail.insert(0, "triton")
    if dev == "cuda" and backends.has_flash_attn():
        avail.insert(0, "flash_attn")
    if args.backends:
        avail = [b for b in args.backends.split(",") if b in avail]

    if args.quick:
        dtype = torch.float32 if dev == "cpu" else torch.bfloat16
        seqs, hdims, total, reps = [128, 512], [64], 1024, 7
        var_lens = bpe_like_lengths(4, 40, 400)
        modes = ["fwd", "fwd+bwd"]
    else:
        dtype = torch.bfloat16
        seqs, hdims, total, reps = [512, 1024, 2048, 4096, 8192, 16384], [64, 128], 16384, 0
        var_lens = bpe_like_lengths(16, 200, 2000)
        modes = ["fwd", "fwd+bwd"]
    H_for = {64: 16 if not args.quick else 4, 128: 16 if not args.quick else 2}

    name = device_name(dev)
    rows = []
    print(f"device: {name}; backends: {', '.join(avail)}; dtype {dtype}", flush=True)
    for D in hdims:
        H = H_for[D]
        for L in seqs:
            B = max(1, total // L)
            for causal in (False, True):
                for alibi in (False, True):
                    for mode in modes:
                        res = {}
                        for be in avail:
                            sec, peak = run_case(be, [L] * B, "padded", H, D, dtype, causal, alibi, mode, dev, reps)
                            res[be] = (sec, peak)
                        rows.append(("padded", B, L, H, D, causal, alibi, mode, res,
                                     flops_fwd([L] * B, H, D, causal)))
                        print(fmt_row(rows[-1], avail), flush=True)
        # variable-length batch: packed (varlen) for triton/flash_attn, padded + mask for everyone
        for causal in (False,):
            for alibi in (False, True):
                for mode in modes:
                    res = {}
                    for be in avail:
                        layout = "varlen" if be in ("triton", "flash_attn") else "padded"
                        res[be] = run_case(be, var_lens, layout, H, D, dtype, causal, alibi, mode, dev, reps)
                    rows.append((f"varlen-vs-padded ({100 * (1 - sum(var_lens) / (len(var_lens) * max(var_lens))):.0f}% pad)",
                                 len(var_lens), max(var_lens), H, D, causal, alibi, mode, res,
                                 flops_fwd(var_lens, H, D, causal)))
                    print(fmt_row(rows[-1], avail), flush=True)

    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"attention_{slug(name if dev == 'cuda' else 'cpu')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, avail, name, dtype, args))
    print(f"wrote {out}")


def rate(res, flops, mode, unit):
    sec = res[0]
    if sec is None:
        return None
    f = flops * (3.5 if mode == "fwd+bwd" else 1.0)  # bwd = 2.5x fwd (FlashAttention's count)
    return f / sec / unit


def fmt_row(row, avail, unit=1e12):
    layout, B, L, H, D, causal, alibi, mode, res, flops = row
    parts = [f"{layout} B{B} L{L} H{H} D{D} {'causal' if causal else 'bidir'} "
             f"{'alibi' if alibi else 'noalibi'} {mode}:"]
    for be in avail:
        sec = res[be][0]
        parts.append(f"{be}={'OOM' if sec is None else f'{sec * 1e3:.3g}ms'}")
    return " ".join(parts)


def render(rows, avail, name, dtype, args):
    baseline = "sdpa"
    on_gpu = args.device == "cuda"
    unit, uname = (1e12, "TFLOP/s") if on_gpu else (1e9, "GFLOP/s")
    lines = [f"# Attention benchmark: {name}", "",
             f"`python benchmarks/bench_attention.py{' --quick' if args.quick else ''}`; dtype "
             f"{str(dtype).replace('torch.', '')}; torch {torch.__version__}; median time per call. "
             f"{uname} counts useful FLOPs only (4·L²·H·D per sequence forward, half when causal, 3.5x for "
             "forward+backward; padding not counted). `torch` = plain PyTorch math in the input dtype; "
             "`sdpa` = torch SDPA with ALiBi and padding as an explicit additive bias tensor (no bias: "
             "`is_causal`/no mask). `x sdpa` = sdpa time / backend time (>1 = faster than sdpa). In the "
             "varlen rows `triton`/`flash_attn` run the packed batch; `sdpa`/`torch` run it padded with a mask.",
             ""]
    if not on_gpu:
        lines += ["CPU run: the Triton kernels run only through the interpreter here (not a speed measure), "
                  "so only `torch` and `sdpa` are timed. " + load_note(), ""]
    others = [b for b in avail if b != baseline] if baseline in avail else []
    head = ["layout", "B", "L", "H", "D", "mask", "ALiBi", "pass"]
    head += [f"{b} ms" for b in avail] + [f"{b} {uname}" for b in avail]
    if on_gpu:
        head += [f"{b} peak MiB" for b in avail]
    head += [f"{b} x sdpa" for b in others]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for layout, B, L, H, D, causal, alibi, mode, res, flops in rows:
        cells = [layout, str(B), str(L), str(H), str(D), "causal" if causal else "bidir",
                 "yes" if alibi else "no", mode]
        cells += ["OOM" if res[b][0] is None else f"{res[b][0] * 1e3:.3g}" for b in avail]
        cells += ["OOM" if res[b][0] is None else f"{rate(res[b], flops, mode, unit):.3g}" for b in avail]
        if on_gpu:
            cells += [f"{res[b][1] / 2**20:.0f}" if isinstance(res[b][1], int) else "—" for b in avail]
        base = res.get(baseline, (None,))[0]
        cells += [f"{base / res[b][0]:.2f}" if base and res[b][0] else "—" for b in others]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
