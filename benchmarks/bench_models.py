"""End-to-end model inference: omicskern's models vs the plain-PyTorch reference path of each.

Random weights; throughput in real (non-padding) tokens per second and peak memory of the forward.

* DNABERT-2 on a variable-length batch (BPE tokens of 1-10 kbp DNA, ~5 bp/token): omicskern
  (unpadded, varlen ALiBi attention) vs DNABERT-2's PyTorch path (padded batch, one
  ``[B, H, L, L]`` ALiBi + mask bias tensor, dense softmax; :func:`dnabert2_padded_reference`).
* Nucleotide Transformer (ESM encoder with rotary; the FFN is ESM's plain GELU FFN of the same
  FLOPs as NT-v2's gated one, since NT-v2's remote code is not part of transformers):
  transformers ``EsmForMaskedLM`` (SDPA) vs the same model after ``omicskern.accelerate`` vs
  ``omicskern.models.from_hf`` of it.
* Geneformer on ragged ranked cells: transformers ``BertForMaskedLM`` (SDPA, padded batch) vs
  accelerate vs the omicskern ``Geneformer`` fed ids + offsets.
* HyenaDNA: the same omicskern model with HyenaDNA's own FFT convolution (``torch.fft`` at 2L in
  fp32, bias and gate as separate ops) vs omicskern's ``fft_conv``.

    python benchmarks/bench_models.py            # GPU: released sizes, bf16
    python benchmarks/bench_models.py --quick    # CPU (or GPU): small sizes, < 2 min on CPU

The implementations of one row are timed interleaved in one subprocess (same weights); peak
memory is measured in a separate subprocess per implementation so that it is that case's alone: on CUDA
``torch.cuda.max_memory_allocated`` above the weights and inputs; on CPU the growth of the
process's peak resident set (``ru_maxrss``) during one forward. Writes
``benchmarks/results/models_<device>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import ROOT, cuda_median_s, device_name, slug, wall_median_s, load_note  # first: puts this checkout on sys.path


# ------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------
FULL = {
    "dnabert2": dict(hidden=768, layers=12, heads=12, inter=3072, vocab=4096, n=16, lo=200, hi=2000),
    "nt": dict(hidden=512, layers=12, heads=16, inter=3072, vocab=4107, lens=[(8, 1000), (4, 2000)]),
    "geneformer": dict(hidden=768, layers=12, heads=12, inter=3072, vocab=20275, n=32, lo=500, hi=4096),
    "hyenadna": dict(d_model=256, layers=4, lens=[(8, 1024), (1, 32768), (1, 262144), (1, 1_000_000)]),
}
QUICK = {
    "dnabert2": dict(hidden=128, layers=2, heads=4, inter=512, vocab=4096, n=8, lo=40, hi=400),
    "nt": dict(hidden=128, layers=2, heads=4, inter=384, vocab=4107, lens=[(4, 256)]),
    "geneformer": dict(hidden=128, layers=2, heads=4, inter=512, vocab=20275, n=8, lo=64, hi=512),
    "hyenadna": dict(d_model=128, layers=2, lens=[(2, 1024), (1, 8192)]),
}


def _lengths(n, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(lo, hi + 1, (n,), generator=g)]


def _padded(lengths, vocab, pad, dev, first=None):
    g = torch.Generator().manual_seed(1)
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L), generator=g)
    if first is not None:
        ids[:, 0] = first
    am = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * am + pad * (1 - am)
    return ids.to(dev), am.to(dev)


# ------------------------------------------------------------------------------------------------
# one case (runs in a subprocess)
# ------------------------------------------------------------------------------------------------
def _timeit(fn, dev, reps):
    if dev == "cuda":
        return cuda_median_s(fn, warmup=3, rep=50)
    return wall_median_s(fn, reps)


@contextlib.contextmanager
def _hyenadna_reference_fftconv():
    """HyenaDNA's own fftconv (standalone_hyenadna.py): rfft/irfft at 2L in fp32, then + u*D, then
    the gate as separate elementwise ops."""
    import omicskern.modules.hyena as hy
    from omicskern.ops.fftconv import fft_conv_hyenadna_ref

    def fftconv(u, k, bias=None, *, gate=None, causal=True, backend=None):
        return fft_conv_hyenadna_ref(u, k, bias, gate=gate)

    real = hy.fft_conv
    hy.fft_conv = fftconv
    try:
        yield
    finally:
        hy.fft_conv = real


def build(model: str, size: int, quick: bool, dev: str, impls: list[str]) -> tuple[dict, list[int]]:
    """{impl: zero-argument forward} on one set of random weights (shared by every impl), and the
    real lengths of the batch."""
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    sz = (QUICK if quick else FULL)[model]
    torch.manual_seed(0)
    fns = {}
    if model == "dnabert2":
        from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config, dnabert2_padded_reference

        m = DNABERT2(DNABERT2Config(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                                    num_attention_heads=sz["heads"], intermediate_size=sz["inter"]), mlm_head=False,
                     pooler=False).to(dev, dtype).eval()
        lens = _lengths(sz["n"], sz["lo"], sz["hi"])
        ids, am = _padded(lens, sz["vocab"], 3, dev, first=1)
        fns = {"omicskern": lambda: m(ids, am), "reference": lambda: dnabert2_padded_reference(m, ids, am)}
    elif model in ("nt", "geneformer"):
        import copy

        import omicskern
        from omicskern.models import from_hf

        if model == "nt":
            from transformers import EsmConfig, EsmForMaskedLM

            B, L = sz["lens"][size]
            lens = [L] * B
            cfg = EsmConfig(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                            num_attention_heads=sz["heads"], intermediate_size=sz["inter"],
                            max_position_embeddings=L + 2, position_embedding_type="rotary", pad_token_id=1,
                            mask_token_id=2, token_dropout=False, emb_layer_norm_before=False)
            hf = EsmForMaskedLM(cfg)
            ids, am = _padded(lens, sz["vocab"], 1, dev, first=3)
        else:
            from transformers import BertConfig, BertForMaskedLM

            cfg = BertConfig(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                             num_attention_heads=sz["heads"], intermediate_size=sz["inter"], hidden_act="relu",
                             max_position_embeddings=4096, pad_token_id=0)
            hf = BertForMaskedLM(cfg)
            lens = _lengths(sz["n"], sz["lo"], sz["hi"], seed=2)
            ids, am = _padded(lens, sz["vocab"], 0, dev, first=2)
        hf = hf.to(dev, dtype).eval()
        hf.set_attn_implementation("sdpa")
        if "omicskern" in impls:
            om = from_hf(hf)
            if model == "nt":
                fns["omicskern"] = lambda: om(ids, am, return_logits=True)
            else:
                flat = ids[am.bool()]
                offsets = [0]
                for n in lens:
                    offsets.append(offsets[-1] + n)
                from omicskern.batch import Batch

                batch = Batch(flat, torch.tensor(offsets, device=flat.device))
                fns["omicskern"] = lambda: om(batch, return_logits=True)
        if "accelerate" in impls:
            acc = copy.deepcopy(hf) if "reference" in impls else hf
            omicskern.accelerate(acc)
            fns["accelerate"] = lambda: acc(input_ids=ids, attention_mask=am)
        if "reference" in impls:
            fns["reference"] = lambda: hf(input_ids=ids, attention_mask=am)
    elif model == "hyenadna":
        from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig

        B, L = sz["lens"][size]
        lens = [L] * B
        cfg = HyenaDNAConfig(d_model=sz["d_model"], n_layer=sz["layers"], d_inner=4 * sz["d_model"], vocab_size=12,
                             l_max=L + 2, layer={"emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True})
        m = HyenaDNA(cfg).to(dev, dtype).eval()
        ids = torch.randint(7, 11, (B, L), device=dev)

        def ref():
            with _hyenadna_reference_fftconv():
                return m(ids)

        fns = {"omicskern": lambda: m(ids), "reference": ref}
    else:
        raise ValueError(model)
    return {k: v for k, v in fns.items() if k in impls}, lens


def run_case(case: dict) -> dict:
    """Time every impl of one (model, size) interleaved in this process (so that load from other
    jobs hits them alike; min over rounds), or with ``case["mem"]`` measure one impl's peak memory."""
    dev, quick = case["dev"], case["quick"]
    if dev == "cpu" and case.get("threads"):
        torch.set_num_threads(case["threads"])
    impls = [case["mem"]] if case.get("mem") else case["impls"]
    fns, lens = build(case["model"], case["size"], quick, dev, impls)
    out = {"tokens": sum(lens), "B": len(lens), "L": max(lens)}

    def call(fn):
        with torch.no_grad():
            fn()

    try:
        if case.get("mem"):
            fn = fns[case["mem"]]
            if dev == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                call(fn)
                out["peak"] = torch.cuda.max_memory_allocated() - base
            else:
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                call(fn)
                out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
            return out
        secs = {k: [] for k in fns}
        for k, fn in fns.items():
            call(fn)  # warm-up
        if dev == "cuda":
            for k, fn in fns.items():
                secs[k] = [_timeit(lambda: call(fn), dev, 0)]
            out["sec"] = {k: min(v) for k, v in secs.items()}
        else:
            # On a shared CPU, wall time mostly measures the other jobs; the process's CPU time (all
            # threads) is what the implementation costs. Both are reported; ratios use CPU time.
            cpu = {k: [] for k in fns}
            for _ in range(3 if quick else 10):
                for k, fn in fns.items():
                    c0 = time.process_time()
                    secs[k].append(_timeit(lambda: call(fn), dev, 1))
                    cpu[k].append(time.process_time() - c0)
            out["sec"] = {k: min(v) for k, v in cpu.items()}
            out["wall"] = {k: min(v) for k, v in secs.items()}
    except torch.OutOfMemoryError:
        out["oom"] = True
    return out


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
IMPLS = {
    "dnabert2": [("reference", "DNABERT-2 PyTorch path (padded, [B,H,L,L] ALiBi bias)"), ("omicskern", "omicskern DNABERT2 (unpadded, varlen)")],
    "nt": [("reference", "transformers EsmForMaskedLM (SDPA)"), ("accelerate", "same + omicskern.accelerate"),
           ("omicskern", "omicskern NucleotideTransformer (from_hf)")],
    "geneformer": [("reference", "transformers BertForMaskedLM (SDPA, padded)"), ("accelerate", "same + omicskern.accelerate"),
                   ("omicskern", "omicskern Geneformer (ragged ids + offsets)")],
    "hyenadna": [("reference", "HyenaDNA fftconv (torch.fft at 2L, fp32)"), ("omicskern", "omicskern fft_conv")],
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU-friendly)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="dnabert2,nt,geneformer,hyenadna")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: CPU time of one thread is the cleanest cost measure on a "
                         "shared machine; idle worker threads spinning would count as CPU time)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    dev = args.device
    if dev == "cpu":
        torch.set_num_threads(args.threads)
    name = device_name(dev)
    sizes = QUICK if args.quick else FULL
    rows = []
    print(f"device: {name}", flush=True)
    for model in args.models.split(","):
        n_sizes = len(sizes[model].get("lens", [None]))
        impls = [i for i, _ in IMPLS[model]]
        for size in range(n_sizes):
            base = dict(dev=dev, model=model, quick=args.quick, size=size, impls=impls, threads=args.threads)
            t = _sub(base)
            res = {}
            for impl in impls:
                m = _sub(dict(base, mem=impl)) if "error" not in t else t
                r = {k: t[k] for k in ("tokens", "B", "L") if k in t}
                if "error" in t or "error" in m:
                    r["error"] = t.get("error") or m.get("error")
                elif t.get("oom") or m.get("oom"):
                    r["oom"] = True
                else:
                    r["sec"], r["peak"] = t["sec"][impl], m["peak"]
                    if "wall" in t:
                        r["wall"] = t["wall"][impl]
                res[impl] = r
                msg = (r.get("error") or ("OOM" if r.get("oom") else
                                          f"{r['tokens'] / r['sec']:.0f} tok/s, peak {r['peak'] / 2**20:.0f} MiB"))
                print(f"{model} size{size} {impl}: {msg}", flush=True)
            rows.append((model, size, res))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"models_{slug(name) if dev == 'cuda' else 'cpu'}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, name, args))
    print(f"wrote {out}")


def _sub(case: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                       timeout=3600)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(line[0][len("RESULT "):])


def render(rows, name, args):
    sizes = QUICK if args.quick else FULL
    dt = "float32" if args.device == "cpu" else "bfloat16"
    lines = [f"# Model inference benchmark: {name}", "",
             f"`python benchmarks/bench_models.py{' --quick' if args.quick else ''}`; {dt}; torch {torch.__version__}; "
             "random weights; inference (`no_grad`); the implementations of one row run interleaved in one "
             "process on the same weights. "
             + ("Time per forward: `triton.testing.do_bench` median. " if args.device == "cuda" else
                f"Time per forward on CPU: the process's CPU time (`time.process_time`, {args.threads} torch "
                "thread(s)), min over 3 rounds -- on a machine shared with other jobs wall time mostly "
                "measures them; tokens/s and speed-ups use CPU time, wall time (min) is shown beside it. ")
             + "tokens/s counts real tokens only "
             "(no padding). Peak memory: "
             + ("CUDA allocator peak above weights and inputs." if args.device == "cuda" else
                "growth of the peak RSS of a fresh process during one forward (coarse: allocator caching "
                "and page reuse blur it; compare within a row only)."),
             "", "Sizes: " + "; ".join(f"{k}: {v}" for k, v in sizes.items()), ""]
    if args.device == "cpu":
        lines += ["CPU run: the Triton kernels are not timed (interpreter only), so omicskern runs its CPU "
                  "backends (attention: PyTorch SDPA on packed/unpadded tokens; fft_conv: `torch`). "
                  + load_note() + " GPU figures: not measured in this session (no GPU).", ""]
    cpu = args.device == "cpu"
    lines += ["| model | batch | implementation | tokens/s | " + ("CPU ms / forward | wall ms |" if cpu else "ms / forward |")
              + " peak MiB | speed-up vs reference |",
              "|---|---|---|---|---|---|---|" + ("---|" if cpu else "")]
    for model, size, res in rows:
        ref = res.get("reference", {})
        for impl, label in IMPLS[model]:
            r = res[impl]
            if "error" in r:
                lines.append(f"| {model} | — | {label} | error: {r['error']} | | | |")
                continue
            batch = f"B={r['B']}, max L={r['L']}, {r['tokens']} tokens"
            if r.get("oom"):
                lines.append(f"| {model} | {batch} | {label} | OOM | | | |")
                continue
            sp = f"{ref['sec'] / r['sec']:.2f}x" if ref.get("sec") else "—"
            wall = f" {r['wall'] * 1e3:.1f} |" if cpu else ""
            lines.append(f"| {model} | {batch} | {label} | {r['tokens'] / r['sec']:,.0f} | {r['sec'] * 1e3:.1f} |{wall} "
                         f"{r['peak'] / 2**20:.0f} | {sp} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
