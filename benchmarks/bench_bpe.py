"""BPE throughput (Mbp/s): omicskern ``BPETokenizer`` vs Hugging Face ``tokenizers``, same tokenizer.json.

Input: the E. coli K-12 genome (``../shared/data/dna/ecoli_k12_mg1655.fa.gz``, 4,639,675 bp, read
with gzip) as 10 kbp chunks and as one 4.6 Mbp string; DNABERT-2's ``tokenizer.json``
(``tests/data/dnabert2_tokenizer.json``); 1 thread and all threads. Ids are checked equal.
Also: training a 4096-token vocabulary (omicskern ``BPETokenizer.train`` vs HF ``BpeTrainer``).

Timing: median of repeats (one warm-up; a first run longer than the budget is the measurement).
Wall clock and, for 1 thread, CPU process time (steadier on a shared machine). HF threads:
``TOKENIZERS_PARALLELISM=false`` vs its rayon pool. Also the previous omicskern engine
(``algorithm="windows"``) for comparison.

    python benchmarks/bench_bpe.py            # writes benchmarks/results/bpe_<cpu>.md
    python benchmarks/bench_bpe.py --quick    # 1.2 Mbp of the genome, short budget (< 2 min)
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import statistics
import time
from pathlib import Path

# An idle OpenBLAS pool (started by numpy at import) spins after BLAS calls and its CPU time would
# count against whichever tokenizer runs next in this process; no BLAS is used here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from _common import ROOT, SHARED, cpu_name, load_note  # noqa: E402  (puts this checkout on sys.path)

ECOLI = SHARED / "data" / "dna" / "ecoli_k12_mg1655.fa.gz"
TOKENIZER_JSON = ROOT / "tests" / "data" / "dnabert2_tokenizer.json"


def read_genome(path: Path) -> str:
    with gzip.open(path, "rt") as f:  # BGZF is gzip-compatible
        return "".join(line.strip() for line in f if not line.startswith(">"))


def timeit(fn, budget: float, max_reps: int = 20):
    """(median wall s, median process s, last result)."""
    walls, cpus = [], []
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    first_wall, first_cpu = time.perf_counter() - t, time.process_time() - c
    if first_wall > budget:
        return first_wall, first_cpu, result
    start = time.perf_counter()
    while len(walls) < max_reps and (not walls or time.perf_counter() - start < budget):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1.2 Mbp of the genome, short budget")
    ap.add_argument("--budget", type=float, default=None, help="seconds of repeats per case")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/bpe_<cpu>.md)")
    args = ap.parse_args()
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 2.0)

    import tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from omicskern._native import load_C
    from omicskern.tokenizers.bpe import BPETokenizer

    genome = read_genome(ECOLI)
    if args.quick:
        genome = genome[:1_200_000]
    n_bp = len(genome)
    chunks = [genome[i:i + 10_000] for i in range(0, n_bp, 10_000)]
    all_threads = load_C().hardware_threads()
    ours = BPETokenizer.from_file(TOKENIZER_JSON)
    hf = Tokenizer.from_file(str(TOKENIZER_JSON))

    rows = []
    speed = {}
    for label, seqs in (("10 kbp chunks", chunks), (f"one {n_bp / 1e6:.1f} Mbp string", [genome])):
        for threads in sorted({1, all_threads}):
            w, c, got = timeit(lambda: ours.encode_batch(seqs, padding=False, num_threads=threads), budget)
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
            hw, hc, want = timeit(lambda: hf.encode_batch(seqs), budget, max_reps=3)
            same = all(np.array_equal(got[i], want[i].ids) for i in range(len(seqs)))
            speed[(label, threads)] = (n_bp / w / 1e6, n_bp / hw / 1e6, n_bp / c / 1e6)
            rows.append((label, threads, n_bp / w / 1e6, n_bp / hw / 1e6, hw / w,
                         (n_bp / c / 1e6, n_bp / hc / 1e6, hc / c) if threads == 1 else None, same))
            print(rows[-1], flush=True)

    # the previous engine (bucket queue, cache-sized windows), 1 thread, for the record
    prev = {}
    ours.algorithm = "windows"
    for label, seqs in (("10 kbp chunks", chunks), (f"one {n_bp / 1e6:.1f} Mbp string", [genome])):
        w, c, got = timeit(lambda: ours.encode_batch(seqs, padding=False, num_threads=1), budget)
        prev[label] = (n_bp / w / 1e6, n_bp / c / 1e6)
    ours.algorithm = "auto"

    # training: 1.2 Mbp (quick: 300 kbp) of 10 kbp chunks, 4096 tokens, Whitespace pre-tokenizer
    train_chunks = chunks[:30 if args.quick else 120]
    train_bp = sum(map(len, train_chunks))
    t = time.perf_counter()
    trained = BPETokenizer.train(train_chunks, vocab_size=4096)
    t_ours = time.perf_counter() - t
    hf_tr = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf_tr.pre_tokenizer = pre_tokenizers.Whitespace()
    t = time.perf_counter()
    hf_tr.train_from_iterator(train_chunks, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], show_progress=False))
    t_hf = time.perf_counter() - t
    import json
    same_merges = (json.loads(trained.to_json_str())["model"]["merges"]
                   == [list(m) if isinstance(m, list) else m.split(" ")
                       for m in json.loads(hf_tr.to_str())["model"]["merges"]])

    cpu = cpu_name()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "bpe_" + re.sub(r"[^a-z0-9]+", "_", cpu.lower()).strip("_")[:60] + ("_quick" if args.quick else "") + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    long_label = f"one {n_bp / 1e6:.1f} Mbp string"
    lin = speed[(long_label, 1)][0] / speed[("10 kbp chunks", 1)][0]
    lin_cpu = speed[(long_label, 1)][2] / speed[("10 kbp chunks", 1)][2]
    lines = [
        f"# BPE throughput: {cpu} ({all_threads} threads)", "",
        f"`python benchmarks/bench_bpe.py{' --quick' if args.quick else ''}`; E. coli K-12 MG1655 "
        f"({n_bp:,} bp{' prefix' if args.quick else ''}); DNABERT-2 tokenizer.json; Python "
        f"{platform.python_version()}, tokenizers {tokenizers.__version__}. Median of repeats (budget "
        f"{budget} s per case; a first run longer than that is the measurement). Mbp/s = bases / time. "
        f"omicskern's time includes special tokens and the ragged int32 numpy output; HF's its `Encoding` "
        f"objects. Ids equal in every row: {'yes' if all(r[-1] for r in rows) else 'NO'}.", "",
        load_note() + " The CPU-time columns (1 thread) are steadier than wall clock.", "",
        "| input | threads | omicskern Mbp/s | HF Mbp/s | speed-up | omicskern Mbp/s (CPU time) | HF Mbp/s "
        "(CPU time) | speed-up (CPU time) | ids equal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, threads, o, h, ratio, cpu_t, same in rows:
        c = ("{:.1f} | {:.2f} | {:.1f}x".format(*cpu_t) if cpu_t else "- | - | -")
        lines.append(f"| {label} | {threads} | {o:.1f} | {h:.2f} | {ratio:.1f}x | {c} | {'yes' if same else 'NO'} |")
    lines += [
        "", f"Linearity (1 thread): omicskern Mbp/s on the single string / on 10 kbp chunks = {lin:.2f} "
        f"(wall), {lin_cpu:.2f} (CPU time); target >= 0.80.", "",
        "omicskern's engine: backtracking (greedy longest match + pair-compatibility test; "
        f"`backtracking={ours.backtracking}`). The previous engine (`algorithm=\"windows\"`: bucket queue, "
        "cache-sized windows), 1 thread, same run: " + "; ".join(
            f"{k}: {v[0]:.1f} Mbp/s wall, {v[1]:.1f} Mbp/s CPU" for k, v in prev.items()) + ".", "",
        f"Training 4096 tokens on {train_bp / 1e6:.1f} Mbp ({len(train_chunks)} x 10 kbp, Whitespace "
        f"pre-tokenizer): omicskern {t_ours:.2f} s, HF BpeTrainer {t_hf:.2f} s ({t_hf / t_ours:.1f}x); "
        f"same merges: {'yes' if same_merges else 'no'}.", "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
