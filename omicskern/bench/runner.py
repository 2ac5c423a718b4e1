"""Suites, the run context and the driver: runs suites, completes their records, writes files.

A suite is one entry of :data:`SUITES`: ``name -> target``. The target is either

* ``"package.module"``: a module with ``run(ctx: Context) -> list[dict]`` (and optionally
  ``plot(records, path, title)`` for its own figure; otherwise :func:`render.plot_records`), or
* ``"benchmarks/bench_x.py"``: a plain script in the checkout (path relative to the repository
  root) with ``run(quick: bool) -> list[dict]``; skipped with a note when the file is absent.

The dicts a suite returns use the record keys of :mod:`omicskern.bench.records` (``case``,
``impl``, ``metric``, ``unit``, ``value``... ; ``suite`` and the provenance are filled in here).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omicskern.bench import records as R

ROOT = Path(__file__).resolve().parents[2]

SUITES: dict[str, str] = {
    "tokenizers": "omicskern.bench.suites.tokenizers",
    "cells": "omicskern.bench.suites.cells",
    "ops": "omicskern.bench.suites.ops",
    "models": "omicskern.bench.suites.models",
    "pipelines": "omicskern.bench.suites.pipelines",
    "long-context": "omicskern.bench.suites.long_context",
    "gpu": "omicskern.bench.suites.gpu",
    # plain scripts other areas add: run(quick: bool) -> list[dict]
    "selective-scan": "benchmarks/bench_selective_scan.py",
    "embed-genome": "benchmarks/bench_embed_genome.py",
    "score-variants": "benchmarks/bench_variants.py",
    "embed-cells": "benchmarks/bench_embed_cells.py",
}
# suites `--suite all` leaves out: the GPU check is asked for by name (it needs a device)
NOT_IN_ALL = ("gpu",)
SIZES = ("tiny", "quick", "full")


class SuiteError(ValueError):
    """An unknown suite, or a suite that returned something that is not a list of records."""


@dataclass
class Context:
    """What a suite gets: the size (``tiny`` = test dry-run, ``quick``, ``full``), the device,
    where shared data lives, and a logger. ``budget_s`` is the repeat budget per timed case."""

    size: str = "quick"
    device: str = "cpu"
    shared: Path | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    def __post_init__(self):
        if self.size not in SIZES:
            raise SuiteError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.shared is None:
            env = os.environ.get("OMICSKERN_SHARED")
            self.shared = Path(env) if env else ROOT.parent / "shared"

    @property
    def quick(self) -> bool:
        return self.size != "full"

    @property
    def tiny(self) -> bool:
        return self.size == "tiny"

    @property
    def cuda(self) -> bool:
        return str(self.device).split(":")[0] == "cuda"

    @property
    def budget_s(self) -> float:
        return {"tiny": 0.02, "quick": 0.4, "full": 2.0}[self.size]

    @property
    def repeats(self) -> int:
        return {"tiny": 2, "quick": 7, "full": 20}[self.size]

    @property
    def mem_method(self) -> str:
        """Peak-memory method: the exact torch-profiler one, except for tiny dry runs (each
        profiled call costs ~0.3 s of set-up), which take the coarse resident-set growth."""
        return "rss" if self.tiny else "auto"

    def pick(self, tiny, quick, full):
        """The value for this run's size."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.size]

    def data(self, *parts: str) -> Path | None:
        """A file under the shared data folder, or None when it is not there."""
        p = self.shared.joinpath(*parts) if self.shared else None
        return p if p is not None and p.exists() else None


def device_slug(device: str) -> str:
    """``cpu``, or the GPU's name as a file-name slug (``nvidia_h200``)."""
    if str(device).split(":")[0] != "cuda":
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")[:40]


def expand(suites: list[str] | str) -> list[str]:
    """Suite names for ``--suite`` values (``all`` = every suite but the GPU check)."""
    names = [suites] if isinstance(suites, str) else list(suites)
    out: list[str] = []
    for n in names:
        if n == "all":
            out += [s for s in SUITES if s not in NOT_IN_ALL]
        elif n in SUITES:
            out.append(n)
        else:
            raise SuiteError(f"unknown suite {n!r} (choose from all, {', '.join(SUITES)})")
    return list(dict.fromkeys(out))


def load_suite(name: str):
    """The suite's module (``run``, optional ``plot``), or None for a script not in this checkout."""
    target = SUITES[name]
    if target.endswith(".py"):
        path = ROOT / target
        if not path.is_file():
            return None
        spec = importlib.util.spec_from_file_location(f"omicskern_bench_script_{name.replace('-', '_')}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(target)


def call_run(mod, ctx: Context) -> list:
    """A script's ``run(quick: bool)`` or a suite's ``run(ctx)``."""
    run = getattr(mod, "run", None)
    if run is None:
        raise SuiteError(f"{mod.__name__}: no run() function")
    params = list(inspect.signature(run).parameters)
    if params and params[0] == "quick":
        return run(ctx.quick)
    return run(ctx)


def run_suite(name: str, ctx: Context, common: dict, mod=None) -> list[dict]:
    """Runs one suite and returns its completed records (schema-checked). A suite that fails
    yields one ``error`` record naming the exception, so the other suites still run."""
    mod = mod or load_suite(name)
    if mod is None:
        return [R.make_record(dict(suite=name, case="(suite)", impl="-", metric="-", unit="-", status="skipped",
                                   note=f"{SUITES[name]} is not in this checkout"), common)]
    t0 = time.perf_counter()
    try:
        raw = call_run(mod, ctx)
    except Exception as e:  # noqa: BLE001 - one suite's failure is reported, the run goes on
        if isinstance(e, SuiteError):
            raise
        ctx.log(f"suite {name}: failed: {type(e).__name__}: {e}")
        raw = [dict(case="(suite)", impl="-", metric="-", unit="-", status="error",
                    note=f"{type(e).__name__}: {str(e)[:300]}")]
    if not isinstance(raw, list):
        raise SuiteError(f"suite {name}: run() returned {type(raw).__name__}, expected a list of dicts")
    out = []
    for i, r in enumerate(raw):
        if isinstance(r, dict):
            r = {**r, "suite": r.get("suite") or name}
        out.append(R.make_record(r, common, where=f"suite {name}, record {i}"))
    ctx.log(f"suite {name}: {len(out)} records in {time.perf_counter() - t0:.0f} s")
    return out


def default_out() -> Path:
    """``benchmarks/results`` of the checkout this package runs from, else ``./bench_results``
    (an installed package has no benchmarks folder beside it)."""
    if (ROOT / "benchmarks").is_dir() and (ROOT / "pyproject.toml").is_file():
        return ROOT / "benchmarks" / "results"
    return Path.cwd() / "bench_results"


def file_stem(suite: str, device: str, size: str) -> str:
    return f"{suite.replace('-', '_')}_{device_slug(device)}{'' if size == 'full' else '_' + size}"


def run(suites: list[str] | str = "all", *, size: str = "quick", device: str = "cpu", out: str | os.PathLike = None,
        plots: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Runs the suites and writes, per suite, into ``out``: ``<stem>.jsonl`` (records appended),
    ``<stem>.csv`` (this run's records), ``<stem>.md`` (tables) and ``<stem>.png`` (plot; a
    clear note instead when matplotlib is missing). ``<stem>`` = ``<suite>_<device>[_quick]``.
    Returns ``{"records": [...], "files": [...], "notes": [...]}``."""
    from omicskern.bench import render

    names = expand(suites)
    ctx = Context(size=size, device=device, **({"log": log} if log else {}))
    out = Path(out) if out is not None else default_out()
    common = R.provenance(device)
    ctx.log(f"omicskern bench: {', '.join(names)} ({size}) on {common['device']['name']}; "
            + R.load_note(common["device"] | {"cpu_count": common["device"].get("cpu_count")}))
    all_records, files, notes = [], [], []
    for name in names:
        mod = load_suite(name)
        recs = run_suite(name, ctx, common, mod)
        all_records += recs
        stem = file_stem(name, device, size)
        files.append(R.append_jsonl(out / f"{stem}.jsonl", recs))
        title = f"omicskern bench {name} ({size}): {common['device']['name']}"
        f, n = write_views(recs, out / stem, title, mod, plots=plots)
        files += f
        for msg in n:
            ctx.log(f"suite {name}: no PNG: {msg}")
        notes += n
    return {"records": all_records, "files": files, "notes": list(dict.fromkeys(notes))}


def write_views(records: list[dict], stem: Path, title: str, mod=None, plots: bool = True) -> tuple[list, list]:
    """``<stem>.csv``, ``<stem>.png`` (the suite module's ``plot`` or the generic one) and
    ``<stem>.md`` (with the module's ``headline(records)`` lines when it has one) from records.
    Returns (files written, notes)."""
    from omicskern.bench import render

    stem = Path(stem)
    files, notes = [R.write_csv(stem.with_suffix(".csv"), records)], []
    png = stem.with_suffix(".png")
    plotted = False
    if plots:
        plotter = getattr(mod, "plot", None) or render.plot_records
        try:
            plotted = bool(plotter(records, png, title))
        except render.PlotUnavailable as e:
            notes.append(str(e))
        if plotted:
            files.append(png)
    head = getattr(mod, "headline", None)
    md = stem.with_suffix(".md")
    md.write_text(render.markdown(records, title=title, png=png.name if plotted else None,
                                  headline=head(records) if head else None))
    files.append(md)
    return files, notes
