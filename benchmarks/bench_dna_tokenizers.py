"""DNA tokenizer throughput (Mbp/s): omicskern vs Hugging Face ``tokenizers`` vs numpy, side by side.

Input: the E. coli K-12 genome (``../shared/data/dna/ecoli_k12_mg1655.fa.gz``, 4,639,675 bp) as
1 kbp chunks, 10 kbp chunks and one 4.6 Mbp string. Every tokenizer, 1 thread and all threads:

* char: omicskern ``CharTokenizer`` | HF char-level tokenizer (``BPE`` model with HyenaDNA's
  vocabulary and no merges, ``[CLS] $A [SEP]`` template) | numpy lookup table per sequence.
* NT 6-mer: omicskern ``KmerTokenizer(6, "nt")`` | HF ``WordLevel`` with NT's vocabulary and a
  ``Split`` regex ``[ACGT]{6}|N|[ACGT]`` (leftmost-first = NT's rules) | numpy (reshape to k
  columns and a dot with 4^j; valid only for N-free input, which E. coli is).
* overlapping 6-mer (DNABERT-1): omicskern ``KmerTokenizer(6, "overlap")`` | DNABERT-1's recipe:
  Python ``seq2kmer`` (space-joined windows) + HF ``WordLevel`` with whitespace split | numpy
  (``sliding_window_view`` dot 4^j).
* BPE (when ``omicskern.tokenizers.bpe`` exists): omicskern ``BPETokenizer.from_file`` | HF
  ``Tokenizer.from_file`` of the same DNABERT-2 ``tokenizer.json``.

Every implementation's ids are checked against omicskern's on the 10 kbp chunks (table column
"ids ="). Timing: one warm-up, then repeats until ~``budget`` seconds (at least 1, at most 50);
the median. HF's thread count: ``TOKENIZERS_PARALLELISM=false`` (sequential) vs its rayon pool
(all cores). HF time covers ``encode_batch`` (its ``Encoding`` objects, ids not converted);
omicskern's covers ragged int32 numpy ids with special tokens.

    python benchmarks/bench_dna_tokenizers.py            # writes benchmarks/results/dna_tokenizers_<cpu>.md
    python benchmarks/bench_dna_tokenizers.py --quick    # shorter budget, same table (< 2 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SHARED, cpu_name, slug, load_note  # first: puts this checkout on sys.path

ECOLI = SHARED / "data" / "dna" / "ecoli_k12_mg1655.fa.gz"
DNABERT2_JSON = SHARED / "fixtures" / "dnabert2_tokenizer" / "tokenizer.json"


def timeit(fn, budget: float, max_reps: int = 50, warmup: bool = True):
    """(median seconds, last result). A first run longer than the budget is the measurement
    (no warm-up needed at that length, and slow baselines would dominate the run time)."""
    times = []
    t = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t
    if first > budget or not warmup:
        times.append(first)
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < budget):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


# ---- Hugging Face equivalents -------------------------------------------------------------------

def hf_char():
    """Character-level in HF: a BPE model with the char vocabulary and no merges (twice as fast
    as WordLevel after a per-character regex Split, the other way to build it)."""
    from tokenizers import Tokenizer, models, processors
    from omicskern.tokenizers import CharTokenizer
    vocab = CharTokenizer().get_vocab()
    tok = Tokenizer(models.BPE(vocab, [], unk_token="[UNK]"))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)])
    return tok


def hf_nt(k: int = 6):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from omicskern.tokenizers import KmerTokenizer
    vocab = KmerTokenizer(k).get_vocab()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[ACGT]{{{k}}}|N|[ACGT]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<cls> $A", special_tokens=[("<cls>", 3)])
    return tok


def hf_overlap(k: int = 6):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from omicskern.tokenizers import KmerTokenizer
    vocab = KmerTokenizer(k, mode="overlap").get_vocab()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def seq2kmer(seq: str, k: int) -> str:
    """DNABERT-1's data preparation: the sequence as space-separated overlapping k-mers."""
    return " ".join(seq[i:i + k] for i in range(len(seq) - k + 1))


def hf_runner(tok, threads: int, prepare=None):
    def run(seqs):
        os.environ["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
        batch = [prepare(s) for s in seqs] if prepare else seqs
        return tok.encode_batch(batch)
    return run


def hf_ids(encodings) -> list[list[int]]:
    return [e.ids for e in encodings]


# ---- numpy baselines ----------------------------------------------------------------------------

def np_char(lut: np.ndarray, cls: int, sep: int):
    def run(seqs):
        parts = []
        for s in seqs:
            ids = lut[np.frombuffer(s.encode("ascii"), np.uint8)]
            if (ids < 0).any():
                raise ValueError("invalid byte")
            parts.append(np.concatenate(([cls], ids, [sep])))
        return parts
    return run


def _digits(s: str, digit_lut: np.ndarray) -> np.ndarray:
    d = digit_lut[np.frombuffer(s.encode("ascii"), np.uint8)]
    if (d < 0).any():
        raise ValueError("numpy k-mer baseline handles A/C/G/T only")
    return d.astype(np.int32)


def np_nt(k: int, digit_lut: np.ndarray):
    pw = 4 ** np.arange(k - 1, -1, -1, dtype=np.int32)
    single = 6 + 4 ** k

    def run(seqs):
        parts = []
        for s in seqs:
            d = _digits(s, digit_lut)
            full = len(d) - len(d) % k
            codes = d[:full].reshape(-1, k) @ pw + 6
            parts.append(np.concatenate(([3], codes, d[full:] + single)))
        return parts
    return run


def np_overlap(k: int, digit_lut: np.ndarray):
    pw = 4 ** np.arange(k - 1, -1, -1, dtype=np.int32)

    def run(seqs):
        parts = []
        for s in seqs:
            d = _digits(s, digit_lut)
            codes = np.lib.stride_tricks.sliding_window_view(d, k) @ pw + 5 if len(d) >= k else np.zeros(0, np.int32)
            parts.append(np.concatenate(([2], codes, [3])))
        return parts
    return run


# ---- main ---------------------------------------------------------------------------------------

def load_genome() -> str:
    from omicskern.io.fasta import FastaFile
    with FastaFile(ECOLI) as fa:
        return fa.sequence(fa.names[0]).upper()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter time budget per case")
    ap.add_argument("--budget", type=float, default=None, help="seconds of repeats per case (default 1.0, quick 0.2)")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/dna_tokenizers_<cpu>.md)")
    args = ap.parse_args(argv)
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 1.0)

    from omicskern import _C
    from omicskern.tokenizers import CharTokenizer, KmerTokenizer

    if not ECOLI.is_file():
        print(f"E. coli genome not found at {ECOLI} (set OMICSKERN_SHARED)", file=sys.stderr)
        return 2
    genome = load_genome()
    n_bp = len(genome)
    inputs = {
        "1 kbp chunks": [genome[i:i + 1000] for i in range(0, n_bp, 1000)],
        "10 kbp chunks": [genome[i:i + 10_000] for i in range(0, n_bp, 10_000)],
        "one 4.6 Mbp string": [genome],
    }
    all_threads = _C.hardware_threads()
    thread_counts = [1] if all_threads == 1 else [1, all_threads]

    digit_lut = np.full(256, -1, np.int8)
    for i, c in enumerate("ATCG"):
        digit_lut[ord(c)] = i
    char_tok = CharTokenizer()
    char_lut = np.full(256, -1, np.int32)
    for c, i in char_tok.get_vocab().items():
        if len(c) == 1:
            char_lut[ord(c)] = i

    # tokenizer -> list of (implementation, threads -> runner(seqs), ids(result) -> list of lists)
    def ok_runner(tok, threads):
        return lambda seqs: tok.encode_batch(seqs, padding=False, num_threads=threads)

    def ok_ids(r):
        return [x.tolist() for x in r]

    def np_ids(parts):
        return [p.tolist() for p in parts]

    cases = {
        "char (HyenaDNA vocab)": [
            ("omicskern CharTokenizer", lambda t: ok_runner(char_tok, t), ok_ids),
            ("HF tokenizers BPE, no merges (per char)", lambda t: hf_runner(hf_char(), t), hf_ids),
            ("numpy lookup table", lambda t: np_char(char_lut, 0, 1) if t == 1 else None, np_ids),
        ],
        "NT 6-mer": [
            ("omicskern KmerTokenizer nt", lambda t: ok_runner(KmerTokenizer(6), t), ok_ids),
            ("HF tokenizers WordLevel + regex split", lambda t: hf_runner(hf_nt(6), t), hf_ids),
            ("numpy reshape @ 4^j (N-free only)", lambda t: np_nt(6, digit_lut) if t == 1 else None, np_ids),
        ],
        "overlapping 6-mer (DNABERT-1)": [
            ("omicskern KmerTokenizer overlap", lambda t: ok_runner(KmerTokenizer(6, mode="overlap"), t), ok_ids),
            ("Python seq2kmer + HF WordLevel", lambda t: hf_runner(hf_overlap(6), t, lambda s: seq2kmer(s, 6)), hf_ids),
            ("numpy sliding window @ 4^j (N-free only)", lambda t: np_overlap(6, digit_lut) if t == 1 else None, np_ids),
        ],
    }
    try:
        from omicskern.tokenizers.bpe import BPETokenizer
        from tokenizers import Tokenizer
        if DNABERT2_JSON.is_file() and hasattr(BPETokenizer, "from_file"):
            bpe = BPETokenizer.from_file(DNABERT2_JSON)
            hf_bpe = Tokenizer.from_file(str(DNABERT2_JSON))
            cases["BPE (DNABERT-2 tokenizer.json)"] = [
                ("omicskern BPETokenizer", lambda t: ok_runner(bpe, t), ok_ids),
                ("HF tokenizers BPE", lambda t: hf_runner(hf_bpe, t), hf_ids),
            ]
    except ImportError as e:
        print(f"BPE skipped: {e}", file=sys.stderr)

    rows = []  # (tokenizer, input, implementation, threads, mbps, ids_equal)
    check = "10 kbp chunks"  # ids of every implementation vs omicskern's, from the timed 1-thread run
    for tname, impls in cases.items():
        results = {}
        for iname, seqs in inputs.items():
            for name, make, to_ids in impls:
                slow = name.startswith(("HF", "Python"))
                for threads in thread_counts:
                    runner = make(threads)
                    if runner is None:
                        continue
                    # HF parallelises over the sequences of a batch: one string runs on one thread
                    if slow and threads > 1 and (len(seqs) == 1 or args.quick):
                        continue
                    if slow and args.quick and name.startswith("Python") and len(seqs) == 1:
                        continue
                    dt, res = timeit(lambda: runner(seqs), min(budget, 0.2) if slow else budget,
                                     warmup=not (slow and args.quick))
                    if iname == check and threads == 1:
                        results[name] = to_ids(res)
                    mbps = n_bp / dt / 1e6
                    rows.append([tname, iname, name, threads, mbps, None])
                    print(f"{tname:32s} {iname:20s} {name:42s} {threads:2d} thr {mbps:9.1f} Mbp/s", flush=True)
        ref = results.get(impls[0][0])
        for r in rows:
            if r[0] == tname:
                r[5] = results.get(r[2]) == ref if ref is not None else None
    write_table(args, rows, budget, n_bp, all_threads)
    return 0


def write_table(args, rows, budget, n_bp, all_threads) -> None:
    cpu = cpu_name()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"dna_tokenizers_{slug(cpu)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    import tokenizers
    base = {}
    for t, i, n, th, m, _ in rows:
        if n.startswith(("HF", "Python")):
            base[(t, i, th, "hf")] = m
        if n.startswith("numpy"):
            base[(t, i, "np")] = m
    lines = [f"# DNA tokenizer throughput: {cpu} ({all_threads} threads)", "",
             f"`python benchmarks/bench_dna_tokenizers.py{' --quick' if args.quick else ''}`; "
             f"E. coli K-12 MG1655 ({n_bp:,} bp); Python {platform.python_version()}, tokenizers "
             f"{tokenizers.__version__}, numpy {np.__version__}; median of repeats (budget {budget:g} s per "
             "case, HF/Python cases 0.2 s; a first run longer than that is the measurement, otherwise it is a "
             "warm-up). Mbp/s = genome bases / time. HF parallelises over the sequences of a batch, so it is "
             "timed with 1 thread on the single string" + ("; --quick: HF/Python baselines 1 thread only, one run "
             "each, the DNABERT-1 Python recipe not on the single string." if args.quick else "."),
             "",
             load_note() + " The all-threads column suffers most on a busy machine (threads wait on "
             "each other when a core is taken).", "",
             "| tokenizer | input | implementation | threads | Mbp/s | vs HF (same threads) | vs numpy (1 thread) | ids = omicskern |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for t, i, n, th, m, eq in rows:
        hf = base.get((t, i, th, "hf"))
        npb = base.get((t, i, "np"))
        lines.append(f"| {t} | {i} | {n} | {th} | {m:,.1f} | {m / hf:.2f}x | " if hf else
                     f"| {t} | {i} | {n} | {th} | {m:,.1f} | - | ")
        lines[-1] += (f"{m / npb:.2f}x |" if npb else "- |") + (" yes |" if eq else " **NO** |" if eq is False else " - |")
    lines += ["", "## Targets (single thread)", ""]

    def get(t, i, prefix, th=1):
        for r in rows:
            if r[0] == t and r[1] == i and r[2].startswith(prefix) and r[3] == th:
                return r[4]
        return None

    c_t = "char (HyenaDNA vocab)"
    for i in ("1 kbp chunks", "10 kbp chunks", "one 4.6 Mbp string"):
        ch, npc, nt = get(c_t, i, "omicskern"), get(c_t, i, "numpy"), get("NT 6-mer", i, "omicskern")
        if ch and npc:
            lines.append(f"- {i}: CharTokenizer {ch:,.0f} Mbp/s (target >= 500: {'met' if ch >= 500 else 'MISSED'}), "
                         f"{ch / npc:.1f}x numpy (target >= 3x: {'met' if ch / npc >= 3 else 'MISSED'}); "
                         f"NT k-mer {nt:,.0f} Mbp/s (target >= 300: {'met' if nt >= 300 else 'MISSED'})")
    b_t = "BPE (DNABERT-2 tokenizer.json)"
    b10, h10 = get(b_t, "10 kbp chunks", "omicskern"), get(b_t, "10 kbp chunks", "HF")
    bl, hl = get(b_t, "one 4.6 Mbp string", "omicskern"), get(b_t, "one 4.6 Mbp string", "HF")
    if b10 and h10:
        lines.append(f"- BPE 10 kbp chunks: {b10 / h10:.1f}x HF (target >= 10x: {'met' if b10 / h10 >= 10 else 'MISSED'})")
    if bl and hl:
        lines.append(f"- BPE 4.6 Mbp string: {bl / hl:.1f}x HF (target >= 20x: {'met' if bl / hl >= 20 else 'MISSED'})")
    if bl and b10:
        lines.append(f"- BPE linearity: 4.6 Mbp string at {bl / b10 * 100:.0f}% of the 10 kbp-chunk speed "
                     f"(target >= 80%: {'met' if bl / b10 >= 0.8 else 'MISSED'})")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
