"""Scale of ``omicskern tokenize`` in the number of records: 10k / 100k / 300k / 1M records of
40 bp, char tokenizer, as one ``.npz`` and as a sharded folder (``--window 40 --unit-bases
1000000``: 25,000 records per shard), each through the CLI in a fresh process with an empty
index cache (so indexing is included). Writes ``benchmarks/results/pipelines_scale_cpu.md``.

    python benchmarks/bench_pipelines_scale.py [--sizes 10000 100000 300000 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(path: Path, n: int) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">read{i}\n{''.join(rng.choices('ACGT', k=40))}\n")


def run(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "omicskern", "tokenize", *args, "--quiet"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_000_000])
    a = ap.parse_args()
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for n in a.sizes:
            fa = d / f"r{n}.fa"
            make(fa, n)
            env = {**os.environ, "OMICSKERN_CACHE": str(d / f"cache-npz-{n}")}
            t_npz = run([str(fa), "--out", str(d / f"o{n}.npz")], env)
            env = {**os.environ, "OMICSKERN_CACHE": str(d / f"cache-dir-{n}")}
            t_dir = run([str(fa), "--out", str(d / f"o{n}"), "--window", "40", "--unit-bases", "1000000"], env)
            t_resume = run([str(fa), "--out", str(d / f"o{n}"), "--window", "40", "--unit-bases", "1000000"], env)
            rows.append((n, n * 40 / 1e6, t_npz, t_dir, t_resume))
            print(f"{n:>9,} records: npz {t_npz:.2f} s, sharded {t_dir:.2f} s, rerun (all done) {t_resume:.2f} s",
                  flush=True)
            shutil.rmtree(d / f"o{n}")
            for p in d.glob(f"*{n}*"):
                if p.is_file():
                    p.unlink()
    load1 = os.getloadavg()
    base = rows[0]
    lines = ["# omicskern tokenize: scale in the number of records (CPU)", "",
             f"`python benchmarks/bench_pipelines_scale.py` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}; load average before "
             f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} "
             "(other jobs were running on this machine: absolute times are noisy, the ratios are the point).", "",
             "40-bp records, char tokenizer, each run a fresh CLI process with an empty index cache (indexing, "
             "fingerprint, tokenizing, writing). Sharded: `--window 40 --unit-bases 1000000` (25,000 records "
             "per shard). Rerun: the same sharded command again (every shard verified by blake2b, nothing redone).",
             "", "| records | Mbp | .npz (s) | sharded (s) | rerun (s) | .npz s per 100k records | sharded s per 100k |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, mbp, t1, t2, t3 in rows:
        lines.append(f"| {n:,} | {mbp:.1f} | {t1:.2f} | {t2:.2f} | {t3:.2f} | {t1 / n * 1e5:.2f} | {t2 / n * 1e5:.2f} |")
    lines += ["", f"Before this change 300,000 records took 614 s (a list membership test per record)."]
    out = ROOT / "benchmarks" / "results" / "pipelines_scale_cpu.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
