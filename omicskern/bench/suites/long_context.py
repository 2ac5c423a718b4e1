"""The long-context study: time per token and peak memory against context length L, forward and
forward+backward, for dense attention (bidirectional, causal, ALiBi), Hyena's ``fft_conv`` and the
full ``HyenaOperator`` (omicskern vs torch.fft in HyenaDNA's formulation) and the selective scan
(Mamba; its curve appears when ``omicskern.ops.selective_scan`` imports, "pending" otherwise);
then model-level tokens/s of a HyenaDNA-shaped and a DNABERT-2-shaped model at a matched
parameter count. L doubles from 1k up to 1M; an implementation stops at the first L whose call
took longer than the size's budget (or whose L x L tensors would not fit the memory cap): the
next L is recorded as ``cut`` with the reason, which is how the plot marks where it ends.

Shapes: one sequence (B = 1), model width d = 128 (attention: 2 heads x 64), fp32 on CPU
(bf16 on CUDA), one torch thread on CPU (process CPU time).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from omicskern.bench.cases import ab_records, memory_record, status_record
from omicskern.bench.runner import Context
from omicskern.bench.suites import _attn
from omicskern.bench.timing import interleaved, peak_memory, pinned_threads

WIDTH = 128
HEADS = 2
STATE = 16  # selective-scan state size N (Mamba's default)
DONE = "done"  # an implementation whose cut is already recorded

DESCS = {
    **{f"attention {v}: {n}": f"{_attn.DESCS[n]} ({v})" for v in ("bidirectional", "causal", "ALiBi")
       for n in _attn.DESCS},
    "fft_conv: omicskern": "omicskern fft_conv (gated causal long conv, bias and gate fused; CPU: torch backend)",
    "fft_conv: torch.fft (HyenaDNA)": "baseline: HyenaDNA's fftconv (rfft/irfft at 2L, fp32) + gate as separate ops",
    "HyenaOperator: omicskern": "omicskern HyenaOperator (in-proj, short conv, implicit filter, fft_conv, out-proj)",
    "HyenaOperator: torch.fft (HyenaDNA)": "baseline: the same operator and weights with HyenaDNA's own torch.fft "
                                           "fftconv in place of fft_conv",
    "selective_scan: omicskern": f"omicskern.ops.selective_scan (mamba_ssm semantics, D={WIDTH}, N={STATE})",
    "selective_scan: reference": "baseline: the op's plain-PyTorch reference (sequential scan)",
}
MODEL_DESCS = {
    "HyenaDNA-shaped": "omicskern HyenaDNA, random weights, d_model/n_layer chosen to match the DNABERT-2-shaped "
                       "model's non-embedding parameters",
    "DNABERT-2-shaped": "omicskern DNABERT2 (ALiBi attention), random weights, hidden 128, 2 layers, 2 heads, "
                        "intermediate 512",
}


def lengths(ctx: Context) -> list[int]:
    return ctx.pick([128, 256], [1 << p for p in range(10, 21)], [1 << p for p in range(10, 21)])


def cut_seconds(ctx: Context) -> float:
    """A call longer than this ends an implementation's curve (quick: the few-minutes budget)."""
    return ctx.pick(0.5, 0.5, 30.0)


def mem_cap_bytes(ctx: Context) -> float:
    if ctx.cuda:
        return 0.8 * torch.cuda.get_device_properties(ctx.device).total_memory
    return ctx.pick(2**28, 1.5 * 2**30, 6 * 2**30)


@contextlib.contextmanager
def hyenadna_fftconv():
    """HyenaOperator with HyenaDNA's own torch.fft fftconv in place of omicskern's fft_conv (the
    module's global name, restored on exit)."""
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


def _selective_scan():
    try:
        from omicskern.ops import selective_scan as ss
    except ImportError:
        return None, None
    fn = getattr(ss, "selective_scan", None)
    ref = getattr(ss, "selective_scan_ref", None)
    return fn, ref


class _Family:
    """One implementation family at one L: builds callables for every implementation."""

    def __init__(self, name: str, impls: list[str], baseline: str | None, build, mem_per_L2: float = 0.0,
                 pending: str | None = None):
        self.name, self.impls, self.baseline, self.build = name, impls, baseline, build
        self.mem_per_L2 = mem_per_L2  # bytes of L x L tensors per L^2 (attention), for the memory cap
        self.pending = pending


def families(ctx: Context) -> list[_Family]:
    dev = ctx.device
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    fams = []
    D = WIDTH // HEADS
    for variant, causal, alibi in (("bidirectional", False, False), ("causal", True, False), ("ALiBi", False, True)):
        names = _attn.impls(dev, alibi)
        if not ctx.cuda:  # on CPU omicskern's path *is* SDPA with the bias tensor: one of them is enough
            names = [n for n in names if n != "sdpa+bias"]

        def build(L, mode, names=names, causal=causal, alibi=alibi, variant=variant):
            g = torch.Generator(device="cpu").manual_seed(0)
            q, k, v, do = (torch.randn(1, L, HEADS, D, generator=g).to(dev, dtype) for _ in range(4))
            leaves = [t.requires_grad_(mode == "fwd+bwd") for t in (q, k, v)]
            slopes = None
            if alibi:
                from omicskern.ops.attention import alibi_slopes

                slopes = alibi_slopes(HEADS).to(dev)
            return {f"attention {variant}: {n}": (_attn.make_call(n, *leaves, causal, slopes), leaves, do)
                    for n in names}
        # eager keeps scores, probabilities (and their grads): ~4 fp32 L x L per head
        fams.append(_Family(f"attention {variant}", [f"attention {variant}: {n}" for n in names],
                            f"attention {variant}: eager", build, mem_per_L2=4 * 4 * HEADS))

    from omicskern.ops.fftconv import fft_conv, fft_conv_hyenadna_ref

    def build_fft(L, mode):
        g = torch.Generator(device="cpu").manual_seed(0)
        u, gate, dy = (torch.randn(1, WIDTH, L, generator=g).to(dev, dtype) for _ in range(3))
        k = (torch.randn(WIDTH, L, generator=g) / math.sqrt(L)).to(dev)
        Dv = torch.randn(WIDTH, generator=g).to(dev)
        leaves = [t.requires_grad_(mode == "fwd+bwd") for t in (u, k, Dv, gate)]
        return {"fft_conv: omicskern": (lambda: fft_conv(leaves[0], leaves[1], leaves[2], gate=leaves[3]), leaves, dy),
                "fft_conv: torch.fft (HyenaDNA)": (lambda: fft_conv_hyenadna_ref(*leaves), leaves, dy)}
    fams.append(_Family("fft_conv", ["fft_conv: omicskern", "fft_conv: torch.fft (HyenaDNA)"],
                        "fft_conv: torch.fft (HyenaDNA)", build_fft))

    from omicskern.modules.hyena import HyenaOperator

    def build_op(L, mode):
        torch.manual_seed(0)
        op = HyenaOperator(d_model=WIDTH, l_max=L, emb_dim=5, w=10).to(dev, dtype)
        u = torch.randn(1, L, WIDTH, device=dev, dtype=dtype).requires_grad_(mode == "fwd+bwd")
        dy = torch.randn(1, L, WIDTH, device=dev, dtype=dtype)
        leaves = [u] + list(op.parameters())

        def base():
            with hyenadna_fftconv():
                return op(u)
        return {"HyenaOperator: omicskern": (lambda: op(u), leaves, dy),
                "HyenaOperator: torch.fft (HyenaDNA)": (base, leaves, dy)}
    fams.append(_Family("HyenaOperator", ["HyenaOperator: omicskern", "HyenaOperator: torch.fft (HyenaDNA)"],
                        "HyenaOperator: torch.fft (HyenaDNA)", build_op))

    ss, ss_ref = _selective_scan()
    names = ["selective_scan: omicskern"] + (["selective_scan: reference"] if ss_ref else [])

    def build_ss(L, mode):
        g = torch.Generator(device="cpu").manual_seed(0)
        u, dy = (torch.randn(1, WIDTH, L, generator=g).to(dev, dtype) for _ in range(2))
        delta = torch.nn.functional.softplus(torch.randn(1, WIDTH, L, generator=g) - 2).to(dev, dtype)
        A = -torch.rand(WIDTH, STATE, generator=g).add(0.5).to(dev)
        Bm, Cm = (torch.randn(1, STATE, L, generator=g).to(dev, dtype) for _ in range(2))
        Dv = torch.randn(WIDTH, generator=g).to(dev)
        leaves = [t.requires_grad_(mode == "fwd+bwd") for t in (u, delta, A, Bm, Cm, Dv)]
        out = {"selective_scan: omicskern": (lambda: ss(*leaves), leaves, dy)}
        if ss_ref:
            out["selective_scan: reference"] = (lambda: ss_ref(*leaves), leaves, dy)
        return out
    fams.append(_Family("selective_scan", names, "selective_scan: reference" if ss_ref else None, build_ss,
                        pending=None if ss else "omicskern.ops.selective_scan is not importable yet "
                                                "(the Caduceus/Mamba work lands it); its curve appears then"))
    return fams


def _as_fn(call, leaves, dout, mode):
    if mode == "fwd":
        def f():
            with torch.no_grad():
                call()
    else:
        def f():
            out = call()
            torch.autograd.grad(out, [t for t in leaves if t.requires_grad], dout, allow_unused=True)
    return f


def op_records(ctx: Context) -> list[dict]:
    out = []
    cut_s, cap = cut_seconds(ctx), mem_cap_bytes(ctx)
    for fam in families(ctx):
        for mode in ("fwd", "fwd+bwd"):
            case = f"time per token ({mode})"
            alive = {n: None for n in fam.impls}  # None = still running, else the reason it stopped
            last: dict[str, float] = {}  # seconds per call at the previous L
            for L in lengths(ctx):
                params = dict(L=L, B=1, d=WIDTH, family=fam.name)
                if fam.pending:
                    out += [status_record(case, params, n, "time", "us/token", "pending", fam.pending, DESCS.get(n))
                            for n in fam.impls]
                    continue
                run_now = []
                for n in fam.impls:
                    why = alive[n]
                    need = fam.mem_per_L2 * L * L * (1.0 if "eager" in n else 0.5 if "ALiBi" in n else 0.0)
                    if why is None and need > cap:
                        why = alive[n] = (f"cut: its L x L tensors need ~{need / 2**30:.1f} GiB > the "
                                          f"{cap / 2**30:.1f} GiB memory cap")
                    if why == DONE:
                        continue
                    if why is not None:  # one cut record: the first L not run, and why
                        out.append(status_record(case, params, n, "time", "us/token", "cut", why, DESCS.get(n)))
                        alive[n] = DONE
                    else:
                        run_now.append(n)
                if not run_now:
                    continue
                try:
                    calls = fam.build(L, mode)
                    fns = {n: _as_fn(*calls[n], mode) for n in run_now}
                    first = {}
                    for n, f in fns.items():  # warm-up, timed: a call beyond the budget ends the curve
                        c0 = time.process_time() if not ctx.cuda else time.perf_counter()
                        f()
                        first[n] = (time.process_time() if not ctx.cuda else time.perf_counter()) - c0
                    slow = max(first.values())
                    reps = ctx.repeats if slow < cut_s / 8 else (3 if slow < cut_s / 2 else 1)
                    t = interleaved(fns, device=ctx.device, repeats=reps, min_repeats=min(reps, 3), warmup=0,
                                    budget_s=ctx.budget_s * len(fns))
                except torch.OutOfMemoryError as e:
                    for n in run_now:
                        alive[n] = "cut: out of memory at the previous L"
                        out.append(status_record(case, params, n, "time", "us/token", "oom", str(e).splitlines()[0]))
                    continue
                ctx.log(f"  long-context {fam.name} {mode} L={L}: " + ", ".join(
                    f"{n.split(': ')[-1]} {t[n].median * 1e6 / L:.3g} us/token" for n in t))
                base = fam.baseline if fam.baseline in t else None
                out += ab_records(case, params, t, DESCS, base, "time", "us/token", per=L, scale=1e6)
                for n, f in fns.items():
                    b, method = peak_memory(f, device=ctx.device, method=ctx.mem_method)
                    out.append(memory_record(f"peak memory ({mode})", params, n, b, method, DESCS.get(n)))
                for n in run_now:
                    # the next L's cost, from this L's and the growth since the previous one (>= linear)
                    sec = t[n].median
                    growth = max(2.0, min(sec / last[n], 8.0)) if last.get(n) else 2.0
                    last[n] = sec
                    if sec * growth > cut_s:
                        alive[n] = (f"cut: at L={L} one call took {sec:.2f} s; the next L would take "
                                    f"~{sec * growth:.2f} s > the {cut_s:g} s budget")
    return out


# ---- model level -----------------------------------------------------------------------------------
def _n_params(m, exclude=("embeddings", "wte", "word_embeddings", "lm_head", "decoder", "cls")) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if not any(e in n for e in exclude))


def matched_models(L_max: int, dev, dtype):
    """(hyena, dnabert2, params): a DNABERT-2-shaped model and the HyenaDNA-shaped one whose
    non-embedding parameter count is closest to it (d_model searched in steps of 8, 2 layers)."""
    from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config
    from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig

    torch.manual_seed(0)
    bert = DNABERT2(DNABERT2Config(vocab_size=4096, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=512), mlm_head=False, pooler=False)
    target = _n_params(bert)

    def hyena(d):
        return HyenaDNA(HyenaDNAConfig(d_model=d, n_layer=2, d_inner=4 * d, vocab_size=12, l_max=L_max + 2,
                                       layer={"emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True}))
    # parameters do not depend on l_max beyond the positional buffer; search on a short one
    best = min(range(64, 257, 8), key=lambda d: abs(_n_params(HyenaDNA(HyenaDNAConfig(
        d_model=d, n_layer=2, d_inner=4 * d, vocab_size=12, l_max=64,
        layer={"emb_dim": 5, "filter_order": 64, "w": 10, "modulate": True}))) - target))
    torch.manual_seed(0)
    hy = hyena(best)
    info = {"dnabert2_params": target, "hyenadna_params": _n_params(hy), "hyenadna_d_model": best}
    return hy.to(dev, dtype).eval(), bert.to(dev, dtype).eval(), info


def model_records(ctx: Context) -> list[dict]:
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    Ls = [L for L in lengths(ctx) if L <= ctx.pick(256, 1 << 18, 1 << 20)]
    hy, bert, info = matched_models(max(Ls), ctx.device, dtype)
    MODEL_DESCS_RUN = {**MODEL_DESCS}
    MODEL_DESCS_RUN["HyenaDNA-shaped"] += (f" (d_model={info['hyenadna_d_model']}, 2 layers: "
                                           f"{info['hyenadna_params']:,} vs {info['dnabert2_params']:,} parameters)")
    out = []
    cut_s = cut_seconds(ctx) * 2
    cap = mem_cap_bytes(ctx)
    alive = {"HyenaDNA-shaped": None, "DNABERT-2-shaped": None}
    last: dict[str, float] = {}
    for L in Ls:
        params = dict(L=L, B=1, **info)
        ids = torch.randint(7, 11, (1, L), device=ctx.device)
        bids = torch.randint(5, 4096, (1, L), device=ctx.device)
        am = torch.ones(1, L, dtype=torch.long, device=ctx.device)
        fns = {}
        for n in alive:
            if alive[n] is None and n == "DNABERT-2-shaped" and 4 * 4 * 2 * L * L > cap:
                alive[n] = "cut: the L x L ALiBi bias and scores exceed the memory cap"
            if alive[n] not in (None, DONE):
                out.append(status_record("model tokens/s (inference)", params, n, "throughput", "tokens/s", "cut",
                                         alive[n], MODEL_DESCS_RUN[n]))
                alive[n] = DONE
        if alive["HyenaDNA-shaped"] is None:
            fns["HyenaDNA-shaped"] = lambda: hy(ids)
        if alive["DNABERT-2-shaped"] is None:
            fns["DNABERT-2-shaped"] = lambda: bert(bids, am)
        if not fns:
            break

        def nograd(f):
            def g():
                with torch.no_grad():
                    f()
            return g
        fns = {k: nograd(f) for k, f in fns.items()}
        t0 = {}
        for k, f in fns.items():
            c = time.process_time()
            f()
            t0[k] = time.process_time() - c
        reps = ctx.repeats if max(t0.values()) < cut_s / 4 else 1
        t = interleaved(fns, device=ctx.device, repeats=reps, min_repeats=min(reps, 3), warmup=0,
                        budget_s=ctx.budget_s * 2)
        base = "DNABERT-2-shaped" if "DNABERT-2-shaped" in t else None
        out += ab_records("model tokens/s (inference)", params, t, MODEL_DESCS_RUN, base, "throughput", "tokens/s",
                          per=L, rate=True)
        for k in t:
            sec = t[k].median
            growth = max(2.0, min(sec / last[k], 8.0)) if last.get(k) else 2.0
            last[k] = sec
            if sec * growth > cut_s:
                alive[k] = (f"cut: at L={L} one forward took {sec:.2f} s; the next L would take ~{sec * growth:.2f} s "
                            f"> the {cut_s:g} s budget")
        ctx.log(f"  long-context models L={L}: " + ", ".join(f"{k} {L / t[k].median:,.0f} tokens/s" for k in t))
    return out


def run(ctx: Context) -> list[dict]:
    with pinned_threads(1 if not ctx.cuda else None):
        return op_records(ctx) + model_records(ctx)


# ---- views -------------------------------------------------------------------------------------------
def _curves(records, case, metric="time"):
    curves: dict[str, list] = {}
    for r in records:
        if r["case"] == case and r["metric"] == metric and r.get("status") == "ok":
            curves.setdefault(r["impl"], []).append((r["params"]["L"], r["value"]))
    return {k: sorted(v) for k, v in curves.items()}


def crossover(records: list[dict], mode: str = "fwd", attention: str = "attention bidirectional: omicskern sdpa",
              conv: str = "HyenaOperator: omicskern") -> dict:
    """Where the long convolution starts to beat attention (time per token), and the ratio at the
    longest L both ran: ``{"L": first L with conv faster or None, "ratio_at": L, "ratio": t_attn/t_conv}``."""
    c = _curves(records, f"time per token ({mode})")
    att = {L: v for L, v in c.get(attention, []) or c.get(attention.replace("sdpa", "triton"), [])}
    cv = dict(c.get(conv, []))
    common = sorted(set(att) & set(cv))
    first = next((L for L in common if cv[L] < att[L]), None)
    if not common:
        return {"L": None, "first": None, "ratio_at": None, "ratio": None}
    Lm = common[-1]
    return {"L": first, "first": common[0], "ratio_at": Lm, "ratio": att[Lm] / cv[Lm]}


def _from(L, first) -> str:
    if L is None:
        return "at no L measured"
    if L == first:
        return f"already at the shortest L measured ({L:,})"
    return f"from L = {L:,}"


def headline(records: list[dict]) -> list[str]:
    """The sentences README quotes (computed from the records)."""
    lines = []
    for mode in ("fwd", "fwd+bwd"):
        for att in ("attention bidirectional: omicskern sdpa", "attention ALiBi: omicskern sdpa"):
            x = crossover(records, mode, att)
            if x["ratio"] is not None:
                lines.append(f"{mode}: HyenaOperator faster per token than {att.split(':')[0]} {_from(x['L'], x['first'])}"
                             f"; at L = {x['ratio_at']:,} (attention's last L) attention takes {x['ratio']:.1f}x "
                             "the time per token")
    m = _curves(records, "model tokens/s (inference)", "throughput")
    h, b = dict(m.get("HyenaDNA-shaped", [])), dict(m.get("DNABERT-2-shaped", []))
    common = sorted(set(h) & set(b))
    if common:
        first = next((L for L in common if h[L] > b[L]), None)
        lines.append(f"models (inference, matched parameters): HyenaDNA-shaped ahead of DNABERT-2-shaped "
                     f"{_from(first, common[0])}; at L = {common[-1]:,} {h[common[-1]] / b[common[-1]]:.1f}x the "
                     f"tokens/s; DNABERT-2-shaped ends at L = {max(b):,}, HyenaDNA-shaped at L = {max(h):,}")
    return lines


STYLE = {"omicskern": "-", "eager": ":", "torch.fft": "--", "reference": "--", "sdpa+bias": "-.", "flash_attn": "-."}


def plot(records: list[dict], path, title: str) -> bool:
    """One figure, four panels: time per token forward and forward+backward, peak memory forward
    (log-log, one line per implementation), and model-level tokens/s; cut curves end with an x,
    pending ones are named in the legend."""
    from omicskern.bench.render import pyplot

    if not any(r.get("status") == "ok" for r in records):
        return False
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    colors = {}
    pal = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#333333", "#8c564b", "#e377c2"]

    def color(impl):
        fam = impl.split(":")[0]
        if fam not in colors:
            colors[fam] = pal[len(colors) % len(pal)]
        return colors[fam]

    def style(impl):
        for k, v in STYLE.items():
            if k in impl.split(":")[-1]:
                return v
        return "-"

    panels = [(axes[0, 0], "time per token (fwd)", "time", "time per token, forward (µs/token)"),
              (axes[0, 1], "time per token (fwd+bwd)", "time", "time per token, forward+backward (µs/token)"),
              (axes[1, 0], "peak memory (fwd)", "peak_mem", "peak memory, forward (MiB above inputs)")]
    for ax, case, metric, ylabel in panels:
        c = _curves(records, case, metric)
        mode = case.split("(")[-1].rstrip(")")
        for impl, pts in c.items():
            xs, ys = [p[0] for p in pts], [max(p[1], 1e-3) for p in pts]
            cut = any(r["impl"] == impl and r.get("status") == "cut" and r["case"] == f"time per token ({mode})"
                      for r in records)
            ax.plot(xs, ys, style(impl), color=color(impl), marker="o", ms=3, label=impl)
            if cut:
                ax.plot(xs[-1:], ys[-1:], "x", color=color(impl), ms=9, mew=2)
        pend = sorted({r["impl"] for r in records if r.get("status") == "pending"})
        for impl in pend:
            ax.plot([], [], " ", label=f"{impl}: pending")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length L (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    ax = axes[1, 1]
    m = _curves(records, "model tokens/s (inference)", "throughput")
    for impl, pts in m.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        if any(r["impl"] == impl and r.get("status") == "cut" and r["case"].startswith("model") for r in records):
            ax.plot([pts[-1][0]], [pts[-1][1]], "x", ms=9, mew=2, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("model throughput, inference (tokens/s)")
    ax.set_title("matched parameter count, random weights", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    d = next((r.get("device") or {} for r in records), {})
    dt = "bf16" if d.get("kind") == "cuda" else "fp32, 1 thread, process CPU time"
    fig.suptitle(f"Long-context study: attention vs Hyena vs selective scan (B=1, d={WIDTH}) on {d.get('name')}, "
                 f"{dt}\nx = end of a curve (cut: the next L is beyond the time budget or the memory cap)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
