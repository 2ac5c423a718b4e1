"""Views of benchmark records: markdown tables, a short text summary, ``--compare`` of two runs,
and PNG plots (matplotlib, an optional extra: ``pip install omicskern[bench]``)."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

from omicskern.bench.records import case_key, load_note

# a change smaller than this is never flagged, however steady the repeats
MIN_THRESHOLD = 0.05
# records with one repeat (no spread to judge by) are flagged beyond this
SINGLE_RUN_THRESHOLD = 0.25


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (plots are an optional extra)."""


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        a = abs(x)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{x:,.0f}"
        if a >= 10:
            return f"{x:.1f}"
        if a >= 0.01:
            return f"{x:.3g}"
        return f"{x:.3g}"
    return str(x)


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in (p or {}).items())


def markdown(records: list[dict], title: str = "Benchmark results", png: str | None = None,
             headline: list[str] | None = None) -> str:
    """Markdown: a header (device, load, versions, commit), the summary, then one table per case
    with one row per (parameters, implementation) and the implementations described below it."""
    lines = [f"# {title}", ""]
    if records:
        r0 = records[0]
        d = r0.get("device") or {}
        lines += [f"omicskern {r0.get('omicskern')} (git {r0.get('git_sha')}), {r0.get('timestamp')}; device "
                  f"**{d.get('name')}**; torch {d.get('torch')}, triton {d.get('triton')}, Python {d.get('python')}"
                  + (f", CUDA {d.get('cuda')}, driver {d.get('driver')}" if d.get("cuda") else "") + ". "
                  + load_note(d), ""]
        clocks = sorted({r.get("clock") for r in records if r.get("clock")})
        if clocks:
            lines += ["Times: median of repeats after warm-up; clock " + ", ".join(
                {"cpu": "`cpu` = process CPU time (what the work costs; steady when the machine is shared)",
                 "wall": "`wall` = wall clock", "cuda": "`cuda` = device time (triton.testing.do_bench / CUDA events)"}
                [c] for c in clocks) + ". min–max = the range over the repeats. ratio = speed-up over the "
                "baseline measured in the same run (> 1: better than the baseline). On a shared machine the "
                "ratios of interleaved runs are the figures to trust, not the absolute values.", ""]
    if png:
        lines += [f"![{title}]({png})", ""]
    if headline:
        lines += ["## Headline", "", *[f"- {h}" for h in headline], ""]
    lines += ["## Summary", "", *summary(records).splitlines(), ""]
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_case[r["case"]].append(r)
    for case, recs in by_case.items():
        lines += [f"## {case}", ""]
        pkeys: list[str] = []
        for r in recs:
            pkeys += [k for k in (r.get("params") or {}) if k not in pkeys]
        head = pkeys + ["implementation", "metric", "value", "min–max", "n", "clock", "ratio", "vs", "status"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in recs:
            p = r.get("params") or {}
            rng = f"{_fmt(r.get('min'))}–{_fmt(r.get('max'))}" if r.get("repeats") and r["repeats"] > 1 else "—"
            status = r.get("status") or "ok"
            if status != "ok" and r.get("note"):
                status = r["note"] if r["note"].startswith(status) else f"{status}: {r['note']}"
            cells = [_fmt(p.get(k)) for k in pkeys] + [
                r["impl"], f"{r['metric']} ({r['unit']})", _fmt(r.get("value")), rng, _fmt(r.get("repeats")),
                r.get("clock") or "—", (_fmt(r["ratio"]) + "x") if r.get("ratio") else "—",
                r.get("baseline") or "—", status]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        descs = {}
        for r in recs:  # an implementation's own description first, then what records say of it as a baseline
            if r.get("impl_desc"):
                descs.setdefault(r["impl"], r["impl_desc"])
        for r in recs:
            if r.get("baseline") and r.get("baseline_desc"):
                descs.setdefault(r["baseline"], r["baseline_desc"])
        if descs:
            lines += [""] + [f"- **{k}**: {v}" for k, v in descs.items()]
        notes = sorted({r["note"] for r in recs if r.get("note") and (r.get("status") or "ok") == "ok"})
        if notes:
            lines += [""] + [f"- note: {n}" for n in notes]
        lines.append("")
    return "\n".join(lines)


def summary(records: list[dict]) -> str:
    """A few lines: per case, the geometric-mean ratio of each implementation over its baseline
    (range), and the count of cut/pending/error records."""
    ratios: dict[tuple, list[float]] = defaultdict(list)
    status: dict[str, int] = defaultdict(int)
    for r in records:
        status[r.get("status") or "ok"] += 1
        if r.get("ratio") and r.get("status", "ok") == "ok":
            ratios[(r["case"], r["impl"], r.get("baseline"), r["metric"])].append(r["ratio"])
    out = []
    for (case, impl, base, metric), rs in ratios.items():
        gm = math.exp(sum(math.log(x) for x in rs) / len(rs))
        rng = f" (range {min(rs):.2f}–{max(rs):.2f}, {len(rs)} sizes)" if len(rs) > 1 else ""
        out.append(f"- {case}: {impl} {gm:.2f}x {base} ({metric}){rng}")
    other = {k: v for k, v in status.items() if k != "ok"}
    out.append(f"- {len(records)} records" + ("; " + ", ".join(f"{v} {k}" for k, v in sorted(other.items()))
                                             if other else ""))
    return "\n".join(out)


# ---- compare -------------------------------------------------------------------------------------
def _rel_spread(r: dict) -> float | None:
    med, lo, hi = r.get("median"), r.get("min"), r.get("max")
    if not med or lo is None or hi is None or (r.get("repeats") or 0) < 2:
        return None
    return abs(hi - lo) / abs(med)


def threshold(old: dict, new: dict) -> float:
    """The change two runs' noise justifies flagging: half the relative range (max - min) /
    median of each run's repeats, added (a change beyond it puts the medians outside both ranges'
    overlap), at least :data:`MIN_THRESHOLD`; :data:`SINGLE_RUN_THRESHOLD` when a run has no
    repeats to judge its noise by."""
    so, sn = _rel_spread(old), _rel_spread(new)
    if so is None or sn is None:
        return SINGLE_RUN_THRESHOLD
    return max(MIN_THRESHOLD, 0.5 * so + 0.5 * sn)


def compare(old: list[dict], new: list[dict]) -> list[dict]:
    """Per measurement in both runs (same suite, case, params, implementation, metric): old and
    new value, the change in the good direction (+: better, -: worse) and whether it is a
    regression (worse by more than :func:`threshold`). The last record of a key wins (a JSONL
    file accumulates runs)."""
    o = {case_key(r): r for r in old if r.get("value") is not None and (r.get("status") or "ok") == "ok"}
    rows = []
    for r in new:
        k = case_key(r)
        if k not in o or r.get("value") is None or (r.get("status") or "ok") != "ok":
            continue
        a, b = o[k]["value"], r["value"]
        if not a or not b:
            continue
        better = r.get("better") or "higher"
        change = (b / a - 1.0) if better == "higher" else (a / b - 1.0)
        thr = threshold(o[k], r)
        rows.append({"suite": r["suite"], "case": r["case"], "params": r.get("params") or {}, "impl": r["impl"],
                     "metric": r["metric"], "unit": r["unit"], "old": a, "new": b, "change": change,
                     "threshold": thr, "regression": change < -thr, "improvement": change > thr})
    # one row per key (a new file may hold several runs too: keep the last)
    return list({(x["suite"], x["case"], json.dumps(x["params"], sort_keys=True), x["impl"], x["metric"]): x
                 for x in rows}.values())


def compare_text(rows: list[dict]) -> str:
    lines = []
    for x in rows:
        flag = "REGRESSION" if x["regression"] else ("improved" if x["improvement"] else "ok")
        lines.append(f"{flag:10s} {x['suite']}/{x['case']} [{_params(x['params'])}] {x['impl']} {x['metric']}: "
                     f"{_fmt(x['old'])} -> {_fmt(x['new'])} {x['unit']} ({x['change'] * 100:+.1f}%, "
                     f"threshold {x['threshold'] * 100:.0f}%)")
    n = sum(x["regression"] for x in rows)
    lines.append(f"{len(rows)} measurements compared, {n} regression{'s' if n != 1 else ''}")
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot with the Agg backend, or :class:`PlotUnavailable` with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("PNG plots need matplotlib (an optional extra): pip install 'omicskern[bench]' "
                              "or pip install matplotlib; JSONL, CSV and markdown were written") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


SWEEP_KEYS = ("L", "tokens", "cells", "records", "n")


def _sweep_key(recs: list[dict]) -> str | None:
    for k in SWEEP_KEYS:
        vals = {(r.get("params") or {}).get(k) for r in recs}
        if len(vals) > 1 and all(isinstance(v, (int, float)) for v in vals):
            return k
    return None


BAR_SKIP = ("source", "dtype", "bp", "mem_method")
MAX_LINES = 10  # a sweep with more lines than this goes to the ratio bars instead


def _lines(recs: list[dict], x: str) -> dict[str, list]:
    """label -> [(x, value)]: one line per implementation and combination of the other parameters
    (those that never change are left out of the label)."""
    keys = sorted({k for r in recs for k in (r.get("params") or {}) if k != x})
    vary = [k for k in keys if len({json.dumps((r.get("params") or {}).get(k)) for r in recs}) > 1]
    out: dict[str, list] = defaultdict(list)
    for r in recs:
        rest = {k: r["params"].get(k) for k in vary}
        out[r["impl"] + (f" [{_params(rest)}]" if rest else "")].append((r["params"][x], r["value"]))
    return out


def plot_records(records: list[dict], path: str | Path, title: str) -> bool:
    """A generic figure for a suite: per case with a numeric sweep (L, cells...) the value against
    it, log-log, one line per implementation; the other cases as bars of their ratio over the
    baseline. Returns False when no record has a value to plot."""
    ok = [r for r in records if r.get("value") is not None and (r.get("status") or "ok") == "ok"]
    if not ok:
        return False
    plt = pyplot()
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        by_case[(r["case"], r["metric"], r["unit"])].append(r)
    sweeps = {k: v for k, v in by_case.items() if _sweep_key(v) and len(_lines(v, _sweep_key(v))) <= MAX_LINES}
    bars = [r for k, v in by_case.items() if k not in sweeps for r in v if r.get("ratio")]
    if not sweeps and not bars:
        return False
    cols = max(1, min(3, len(sweeps)))
    rows = (len(sweeps) + cols - 1) // cols
    bar_h = max(2.5, 0.14 * len(bars)) if bars else 0.0
    fig = plt.figure(figsize=(max(5.4 * cols, 13.0 if bars else 0.0), 3.9 * rows + bar_h + 0.6))
    grid = fig.add_gridspec(rows + (1 if bars else 0), cols,
                            height_ratios=[3.9] * rows + ([bar_h] if bars else []))
    sweep_axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(sweeps))]
    ax_iter = iter(sweep_axes)
    for (case, metric, unit), recs in sweeps.items():
        ax = next(ax_iter)
        x = _sweep_key(recs)
        lines = _lines(recs, x)
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label[:60])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(f"{metric} ({unit})")
        ax.set_title(case, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    if bars:
        ax = fig.add_subplot(grid[rows, :])
        def short(r):  # the parameters that tell the bars apart (not the case's own name, not constants)
            p = {k: v for k, v in (r.get("params") or {}).items() if v != r["case"] and k not in BAR_SKIP}
            return f"{r['case']}: {r['impl']} vs {r.get('baseline')} [{_params(p)}]"[:110]
        labels = [short(r) for r in bars]
        ax.barh(range(len(bars)), [r["ratio"] for r in bars], color="tab:blue")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(bars)), labels, fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up over the baseline (x, log)")
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    with warnings.catch_warnings():  # tight_layout cannot always fit long labels; bbox_inches does
        warnings.simplefilter("ignore")
        fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long bar labels: grow the canvas, do not clip
    plt.close(fig)
    return True
