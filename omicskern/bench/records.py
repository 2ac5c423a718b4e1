"""One benchmark measurement = one record (a flat JSON object), and the files that hold them.

Schema (``SCHEMA_VERSION`` 1; keys always present, ``None`` where they do not apply)::

    schema        1
    suite, case   "ops", "fft_conv fwd"                   what was measured
    params        {"B": 8, "H": 64, "L": 4096, ...}       the case's parameters (JSON values)
    impl          "omicskern fft_conv (torch backend)"    the implementation measured
    impl_desc     one line on what impl is
    metric, unit  "time", "ms" | "throughput", "Mbp/s" | "peak_mem", "MiB" | "tflops", "TFLOP/s" ...
    value         the metric at the median time (or the measured value for memory)
    better        "higher" | "lower"                      which direction is better for this metric
    repeats       number of timed repeats
    median, min, max   of the metric over the repeats (same unit as value)
    clock         "cpu" (process CPU time) | "wall" | "cuda" (events / do_bench) | None
    wall_median_s, cpu_median_s   seconds per call on both clocks where known (CPU runs)
    baseline, baseline_desc, baseline_value   the baseline measured in the same run, or None
    ratio         speed-up of impl over the baseline (> 1: impl better; value/baseline for
                  "higher", baseline/value for "lower")
    status        "ok" | "cut" (not run: beyond the budget, see note) | "pending" (the
                  implementation is not available yet) | "error" | "oom" | "skipped"
    note          free text (why cut, data source...)
    device        {"kind", "name", "cpu_model", "threads", "cpu_count", "load_1m", "load_5m",
                   "cuda", "driver", "torch", "triton", "python"}
    omicskern, git_sha, timestamp, run_id     provenance

Files: records are appended to ``results/*.jsonl`` (one JSON object per line) and exported to
CSV (``params`` and ``device`` flattened as ``params.L``, ``device.name``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import json
import math
import os
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
STATUSES = ("ok", "cut", "pending", "error", "oom", "skipped")
FIELDS = ("schema", "suite", "case", "params", "impl", "impl_desc", "metric", "unit", "value", "better",
          "repeats", "median", "min", "max", "clock", "wall_median_s", "cpu_median_s", "baseline",
          "baseline_desc", "baseline_value", "ratio", "status", "note", "device", "omicskern", "git_sha",
          "timestamp", "run_id")
REQUIRED = ("suite", "case", "impl", "metric", "unit")
# metrics whose smaller value is better; anything else (throughputs) is "higher"
LOWER_IS_BETTER_UNITS = {"s", "ms", "us", "ns", "MiB", "GiB", "ms/token", "us/token", "ns/token"}


class RecordError(ValueError):
    """A record that does not follow the schema (names the key and the record)."""


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_load() -> dict:
    """1/5/15-minute load averages and the CPU count (None where unknown)."""
    try:
        l1, l5, l15 = os.getloadavg()
    except (AttributeError, OSError):
        l1 = l5 = l15 = None
    return {"load_1m": l1, "load_5m": l5, "load_15m": l15, "cpu_count": os.cpu_count()}


def load_note(load: dict | None = None) -> str:
    """One sentence: how busy the machine was (1-minute load vs CPU count)."""
    load = load or machine_load()
    l1, n = load.get("load_1m"), load.get("cpu_count") or 1
    if l1 is None:
        return "Machine load: unknown."
    state = ("quiet" if l1 < 0.5 * n else
             "busy: absolute timings are noisy; ratios of interleaved runs are the figures to trust")
    return f"Machine load at the start: 1-min load average {l1:.2f} on {n} CPUs ({state})."


def device_info(device: str = "cpu") -> dict:
    """What the numbers were measured on: device kind and name, CPU model, torch threads, load at
    the start, CUDA/driver versions on GPU, library versions."""
    import torch

    kind = str(device).split(":")[0]
    info = {"kind": kind, "cpu_model": _cpu_model(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "cuda": None, "driver": None}
    info.update({k: v for k, v in machine_load().items() if k in ("load_1m", "load_5m", "cpu_count")})
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if kind == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["driver"] = _nvidia_driver()
    else:
        n = info["threads"]
        info["name"] = f"{info['cpu_model'] or 'cpu'} ({n} thread{'s' if n != 1 else ''})"
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


@functools.lru_cache(maxsize=None)
def git_sha() -> str | None:
    """The checkout's commit (with ``+dirty`` when the tree has changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str = "cpu", run_id: str | None = None) -> dict:
    """The fields every record of one run shares."""
    from omicskern import __version__

    return {"device": device_info(device), "omicskern": __version__, "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id or uuid.uuid4().hex[:12]}


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _json_value(v) for k, v in x.items()}
    if hasattr(x, "item"):  # numpy / torch scalars
        return _json_value(x.item())
    return str(x)


def make_record(raw: dict, common: dict | None = None, where: str = "record") -> dict:
    """Completes a suite's raw dict into a schema record: fills the defaults, the ``better``
    direction from the unit, the ratio from the baseline value, and the shared provenance;
    checks types. Raises :class:`RecordError` naming ``where`` and the key."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected a dict, got {type(raw).__name__}")
    unknown = set(raw) - set(FIELDS)
    if unknown:
        raise RecordError(f"{where}: unknown key(s) {sorted(unknown)} (schema: {', '.join(FIELDS)})")
    rec = {k: None for k in FIELDS}
    rec.update(common or {})
    rec.update({k: v for k, v in raw.items() if v is not None or k not in (common or {})})
    rec["schema"] = SCHEMA_VERSION
    for k in REQUIRED:
        if not isinstance(rec[k], str) or not rec[k]:
            raise RecordError(f"{where}: '{k}' must be a non-empty string, got {rec[k]!r}")
    rec["params"] = dict(rec["params"] or {})
    rec["status"] = rec["status"] or ("ok" if rec["value"] is not None else "skipped")
    if rec["status"] not in STATUSES:
        raise RecordError(f"{where}: status {rec['status']!r} is not one of {STATUSES}")
    if rec["better"] is None:
        rec["better"] = "lower" if rec["unit"] in LOWER_IS_BETTER_UNITS else "higher"
    if rec["better"] not in ("higher", "lower"):
        raise RecordError(f"{where}: better must be 'higher' or 'lower', got {rec['better']!r}")
    for k in ("value", "median", "min", "max", "baseline_value", "ratio", "wall_median_s", "cpu_median_s"):
        v = rec[k]
        if v is not None and not isinstance(v, (int, float)):
            raise RecordError(f"{where}: '{k}' must be a number or None, got {v!r}")
    if rec["status"] == "ok" and rec["value"] is None:
        raise RecordError(f"{where}: status 'ok' needs a value")
    if rec["ratio"] is None and rec["value"] and rec["baseline_value"]:
        rec["ratio"] = (rec["value"] / rec["baseline_value"] if rec["better"] == "higher"
                        else rec["baseline_value"] / rec["value"])
    if rec["median"] is None and rec["value"] is not None:
        rec["median"] = rec["value"]
    return _json_value(rec)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Appends records (one JSON object per line) to ``path``; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=False, allow_nan=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a ``.jsonl`` file. A line that is not a JSON object, or a record without the
    schema's required keys, raises :class:`~omicskern.errors.InvalidFileError` naming the line."""
    from omicskern.errors import InvalidFileError

    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidFileError(f"{path}: line {i}: not JSON ({e.msg})") from None
            if not isinstance(r, dict) or any(k not in r for k in REQUIRED):
                missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
                raise InvalidFileError(f"{path}: line {i}: not a benchmark record (missing {missing})")
            out.append(r)
    return out


def _flat(r: dict) -> dict:
    row = {}
    for k in FIELDS:
        v = r.get(k)
        if k in ("params", "device") and isinstance(v, dict):
            for kk, vv in v.items():
                row[f"{k}.{kk}"] = json.dumps(vv) if isinstance(vv, (list, dict)) else vv
        else:
            row[k] = v
    return row


def write_csv(path: str | os.PathLike, records: list[dict]) -> Path:
    """CSV export of records (``params``/``device`` flattened to ``params.<key>`` columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_flat(r) for r in records]
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def case_key(r: dict) -> tuple:
    """What identifies "the same measurement" across runs (for --compare)."""
    return (r.get("suite"), r.get("case"), json.dumps(r.get("params") or {}, sort_keys=True), r.get("impl"),
            r.get("metric"), r.get("unit"))
