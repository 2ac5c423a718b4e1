"""``omicskern bench``: run the benchmark suites, write records, tables and plots, compare runs.

    omicskern bench [--suite tokenizers|cells|ops|models|pipelines|long-context|gpu|all ...]
                    [--quick] [--device cpu|cuda] [--out DIR] [--compare OLD.jsonl] [--no-plots]

Per suite, into ``--out`` (default ``benchmarks/results`` of the checkout): ``<suite>_<device>
[_quick].jsonl`` (records appended: one JSON object per measurement, schema in
:mod:`omicskern.bench.records`), ``.csv`` (this run), ``.md`` (tables, summary) and ``.png``
(plot; needs matplotlib, else a warning and the rest is written). ``--compare OLD.jsonl`` then
prints each measurement's change against OLD and exits 1 when one regressed beyond the threshold
its repeats' noise justifies. Also ``python -m omicskern.bench``. The conventions (errors, exit
status, stderr) are :mod:`omicskern.cli._common`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omicskern.cli._common import CommandError, UsageError, existing_path

FLAGS: dict[str, str] = {}
FLAG_VALUES: dict[str, str] = {}


def register(subparsers) -> None:
    from omicskern.bench.runner import SUITES

    p = subparsers.add_parser(
        "bench", help="run the benchmark suites (records, tables, plots; --compare two runs)",
        description="Run omicskern's benchmark suites with their baselines side by side and write JSONL records, "
                    "CSV, markdown tables and PNG plots per suite. Progress goes to stderr.")
    p.add_argument("--suite", action="append", default=None, metavar="NAME",
                   help=f"suite to run, repeatable: all (default: every suite but gpu), {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # dry-run sizes (tests, gpu_check DRY_RUN)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default: benchmarks/results of the checkout, else ./bench_results)")
    p.add_argument("--compare", default=None, metavar="OLD.jsonl",
                   help="compare this run with an earlier one; exit 1 on a regression beyond the noise")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run, _parser=p, _flags=FLAGS, _flag_values=FLAG_VALUES)


def _device(value: str | None) -> str:
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = value.split(":")[0]
    if kind not in ("cpu", "cuda") or (kind == "cpu" and value != "cpu"):
        raise UsageError(f"--device: expected cpu or cuda[:N], got {value!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        idx = value.split(":")[1] if ":" in value else "0"
        if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
            raise UsageError(f"--device {value}: no such CUDA device ({torch.cuda.device_count()} available)")
    return value


def run(args) -> int:
    from omicskern.bench import render
    from omicskern.bench.records import read_jsonl
    from omicskern.bench.runner import SuiteError, expand, run as run_suites

    try:
        names = expand(args.suite or ["all"])
    except SuiteError as e:
        raise UsageError(f"--suite: {e}") from None
    if args.tiny and args.quick:
        raise UsageError("--tiny and --quick: choose one")
    old = None
    if args.compare is not None:
        existing_path(args.compare, "--compare")
        old = read_jsonl(args.compare)  # a bad file fails now, before any work
    device = _device(args.device)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a folder")
    if "gpu" in names and not device.startswith("cuda"):
        print("omicskern bench: warning: --suite gpu without a CUDA device: a dry run on CPU at tiny sizes "
              "(Triton interpreter); no figure is a GPU figure", file=sys.stderr)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    res = run_suites(names, size=size, device=device, out=args.out, plots=not args.no_plots)
    for n in res["notes"]:
        print(f"omicskern bench: warning: {n}", file=sys.stderr)
    for f in res["files"]:
        print(f"omicskern bench: wrote {f}", file=sys.stderr)
    print(render.summary(res["records"]))
    bad = [r for r in res["records"] if r.get("status") == "error"]
    if old is not None:
        rows = render.compare(old, res["records"])
        print(render.compare_text(rows))
        if not rows:
            print(f"omicskern bench: warning: no measurement of this run is in {args.compare}", file=sys.stderr)
        if any(r["regression"] for r in rows):
            raise CommandError(f"regression against {args.compare} beyond the noise threshold (see above)")
    if bad:
        raise CommandError(f"{len(bad)} measurement(s) failed: " + "; ".join(
            f"{r['suite']}/{r['case']}: {r['note']}" for r in bad[:3]))
    return 0
