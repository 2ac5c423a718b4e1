"""Pipelines: ``omicskern tokenize`` in the number of records (40-bp records, char tokenizer), as
one ``.npz`` and as a sharded folder (``--window 40 --unit-bases 1000000``), each run a fresh CLI
process with an empty index cache (indexing, fingerprint, tokenizing, writing), then the same
sharded command again (every shard verified, nothing redone). Folds in the former
``benchmarks/bench_pipelines_scale.py``. The figure to read is records/s staying flat as the
record count grows (no per-record cost that grows with the input)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omicskern.bench.runner import ROOT, Context

DESCS = {"tokenize -> .npz": "omicskern tokenize FASTA --out x.npz, fresh process, empty index cache",
         "tokenize -> shards": "omicskern tokenize --window 40 --unit-bases 1000000 (25,000 records per shard)",
         "rerun (all shards done)": "the same sharded command again: every shard verified by blake2b, nothing redone"}


def make_fasta(path: Path, n: int) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">read{i}\n{''.join(rng.choices('ACGT', k=40))}\n")


def _cli(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "omicskern", "tokenize", *args, "--quiet"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    return time.perf_counter() - t


def run(ctx: Context) -> list[dict]:
    sizes = ctx.pick([500], [10_000, 100_000], [10_000, 100_000, 300_000, 1_000_000])
    out = []
    env0 = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for n in sizes:
            fa = d / f"r{n}.fa"
            make_fasta(fa, n)
            t = {}
            env = {**env0, "OMICSKERN_CACHE": str(d / f"cache-npz-{n}")}
            t["tokenize -> .npz"] = _cli([str(fa), "--out", str(d / f"o{n}.npz")], env)
            env = {**env0, "OMICSKERN_CACHE": str(d / f"cache-dir-{n}")}
            shard = [str(fa), "--out", str(d / f"o{n}"), "--window", "40", "--unit-bases", "1000000"]
            t["tokenize -> shards"] = _cli(shard, env)
            t["rerun (all shards done)"] = _cli(shard, env)
            for impl, s in t.items():
                out.append(dict(case="tokenize scale", params=dict(records=n, Mbp=n * 40 / 1e6), impl=impl,
                                impl_desc=DESCS[impl], metric="throughput", unit="records/s", value=n / s,
                                repeats=1, clock="wall", wall_median_s=s,
                                note="one run per size: a fresh process each (start-up included)"))
            shutil.rmtree(d / f"o{n}", ignore_errors=True)
    return out
