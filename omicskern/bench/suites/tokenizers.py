"""DNA tokenizers: throughput (Mbp/s) of omicskern's char, k-mer (NT and overlapping) and BPE
tokenizers against Hugging Face ``tokenizers`` built to give the same ids (a WordLevel/BPE
equivalent for char and k-mer, the same ``tokenizer.json`` for BPE) and numpy lookup tables, side
by side in one process; ids are checked equal. Plus BPE training (omicskern vs HF ``BpeTrainer``)
and BPE's previous engine (``algorithm="windows"``). Folds in the former
``benchmarks/bench_dna_tokenizers.py`` and ``benchmarks/bench_bpe.py``.

Input: the E. coli K-12 genome from the shared data folder (quick: its first 1.2 Mbp), else the
bundled lambda phage genome (48.5 kbp; always for ``tiny``), as 1 kbp chunks, 10 kbp chunks and one
string; 1 thread and all threads. HF's thread count: ``TOKENIZERS_PARALLELISM=false`` vs its rayon
pool (it parallelises over the sequences of a batch, so the single string runs on one thread).
Time: wall clock (the multi-threaded rows need it), median of repeats after one warm-up.
"""

from __future__ import annotations

import os

# An idle OpenBLAS pool (started by numpy at import) spins after BLAS calls and its CPU time would
# count against whichever tokenizer runs next in this process; no BLAS is used here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from omicskern.bench.cases import ab_records, status_record  # noqa: E402
from omicskern.bench.runner import ROOT, Context  # noqa: E402
from omicskern.bench.timing import interleaved  # noqa: E402

DNABERT2_JSON = ROOT / "tests" / "data" / "dnabert2_tokenizer.json"


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


def genome(ctx: Context) -> tuple[str, str]:
    """(sequence, where it came from)."""
    from omicskern.io.fasta import FastaFile

    ecoli = None if ctx.tiny else ctx.data("data", "dna", "ecoli_k12_mg1655.fa.gz")
    path = ecoli or ROOT / "omicskern" / "data" / "lambda_phage.fa"
    with FastaFile(path) as fa:
        seq = fa.sequence(fa.names[0]).upper()
    if ecoli is not None and ctx.quick:
        seq = seq[:1_200_000]
    if ctx.tiny:
        seq = seq[:20_000]
    return seq, f"{path.name} ({len(seq):,} bp{' prefix' if ecoli is not None and ctx.quick else ''})"


def _ids_equal(a, b) -> bool:
    return len(a) == len(b) and all(list(x) == list(y) for x, y in zip(a, b))


def run(ctx: Context) -> list[dict]:
    from omicskern import _C
    from omicskern.tokenizers import CharTokenizer, KmerTokenizer

    seq, source = genome(ctx)
    n_bp = len(seq)
    inputs = {"1 kbp chunks": [seq[i:i + 1000] for i in range(0, n_bp, 1000)],
              "10 kbp chunks": [seq[i:i + 10_000] for i in range(0, n_bp, 10_000)],
              "one string": [seq]}
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

    def ok(tok, threads):
        return lambda seqs: tok.encode_batch(seqs, padding=False, num_threads=threads)

    def ok_ids(r):
        return [x.tolist() for x in r]

    def np_ids(parts):
        return [p.tolist() for p in parts]

    # tokenizer -> [(implementation, description, threads -> runner or None, ids(result))]; first = omicskern
    cases = {
        "char (HyenaDNA vocab)": [
            ("omicskern CharTokenizer", "omicskern CharTokenizer (C++), ragged int32 ids with special tokens",
             lambda t: ok(char_tok, t), ok_ids),
            ("HF BPE, no merges", "baseline: HF tokenizers, BPE model with the char vocabulary and no merges, "
             "[CLS] $A [SEP] template", lambda t: hf_runner(hf_char(), t), hf_ids),
            ("numpy lookup table", "baseline: numpy byte -> id lookup table per sequence, + specials",
             lambda t: np_char(char_lut, 0, 1) if t == 1 else None, np_ids)],
        "NT 6-mer": [
            ("omicskern KmerTokenizer nt", "omicskern KmerTokenizer(6, 'nt') (C++)", lambda t: ok(KmerTokenizer(6), t),
             ok_ids),
            ("HF WordLevel + regex split", "baseline: HF tokenizers WordLevel with NT's vocabulary and a Split regex "
             "[ACGT]{6}|N|[ACGT] (NT's rules)", lambda t: hf_runner(hf_nt(6), t), hf_ids),
            ("numpy reshape @ 4^j", "baseline: numpy, reshape to 6 columns and a dot with 4^j (N-free input only)",
             lambda t: np_nt(6, digit_lut) if t == 1 else None, np_ids)],
        "overlapping 6-mer (DNABERT-1)": [
            ("omicskern KmerTokenizer overlap", "omicskern KmerTokenizer(6, 'overlap') (C++)",
             lambda t: ok(KmerTokenizer(6, mode="overlap"), t), ok_ids),
            ("Python seq2kmer + HF WordLevel", "baseline: DNABERT-1's recipe, Python seq2kmer (space-joined windows) "
             "+ HF WordLevel with whitespace split", lambda t: hf_runner(hf_overlap(6), t, lambda s: seq2kmer(s, 6)),
             hf_ids),
            ("numpy sliding window @ 4^j", "baseline: numpy sliding_window_view dot 4^j (N-free input only)",
             lambda t: np_overlap(6, digit_lut) if t == 1 else None, np_ids)],
    }
    out = []
    try:
        from tokenizers import Tokenizer

        from omicskern.tokenizers.bpe import BPETokenizer

        bpe = BPETokenizer.from_file(DNABERT2_JSON)
        windows = BPETokenizer.from_file(DNABERT2_JSON)
        windows.algorithm = "windows"
        hf_bpe = Tokenizer.from_file(str(DNABERT2_JSON))
        cases["BPE (DNABERT-2 tokenizer.json)"] = [
            ("omicskern BPETokenizer", "omicskern BPETokenizer (C++, backtracking engine) on DNABERT-2's tokenizer.json",
             lambda t: ok(bpe, t), ok_ids),
            ("HF tokenizers BPE", "baseline: HF tokenizers Tokenizer.from_file of the same tokenizer.json",
             lambda t: hf_runner(hf_bpe, t), hf_ids),
            ("omicskern BPE windows engine", "omicskern's previous BPE engine (algorithm='windows': bucket queue, "
             "cache-sized windows)", lambda t: ok(windows, t) if t == 1 else None, ok_ids)]
    except ImportError as e:
        out.append(status_record("BPE (DNABERT-2 tokenizer.json)", {}, "-", "throughput", "Mbp/s", "skipped", str(e)))
    check = "10 kbp chunks"
    for tname, impls in cases.items():
        descs = {n: d for n, d, _, _ in impls}
        base_name = impls[1][0]
        for iname, seqs in inputs.items():
            for threads in thread_counts:
                runners = {}
                for name, _, make, _ in impls:
                    slow = name.startswith(("HF", "Python"))
                    if slow and threads > 1 and (len(seqs) == 1 or ctx.quick):
                        continue  # HF parallelises over sequences; quick: baselines 1 thread only
                    if slow and ctx.quick and name.startswith("Python") and len(seqs) == 1:
                        continue
                    r = make(threads)
                    if r is not None:
                        runners[name] = (lambda r=r, seqs=seqs: r(seqs))
                ref_ids = {}
                if iname == check and threads == 1:
                    ref_ids = {name: conv(runners[name]()) for name, _, _, conv in impls if name in runners}
                t = interleaved(runners, clock="wall", repeats=ctx.repeats, min_repeats=ctx.pick(1, 2, 3),
                                budget_s=ctx.budget_s * len(runners))
                params = dict(tokenizer=tname, input=iname, threads=threads, bp=n_bp)
                note = None
                if ref_ids:
                    first = ref_ids[impls[0][0]]
                    bad = [n for n, ids in ref_ids.items() if not _ids_equal(ids, first)]
                    note = "ids equal to omicskern's: " + ("all" if not bad else "NOT " + ", ".join(bad))
                out += ab_records(tname, params, t, descs, base_name if base_name in t else None, "throughput",
                                  "Mbp/s", per=n_bp, scale=1e6, rate=True, note=note)
    out += bpe_training(ctx, inputs["10 kbp chunks"])
    for r in out:
        r.setdefault("params", {})["source"] = source
    return out


def bpe_training(ctx: Context, chunks: list[str]) -> list[dict]:
    """Training a 4096-token vocabulary (1.2 Mbp of 10 kbp chunks; quick 300 kbp): omicskern
    ``BPETokenizer.train`` vs HF ``BpeTrainer`` (Whitespace pre-tokenizer); one run each."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        from omicskern.tokenizers.bpe import BPETokenizer
    except ImportError as e:
        return [status_record("BPE training", {}, "-", "time", "s", "skipped", str(e))]
    chunks = chunks[:ctx.pick(2, 30, 120)]
    vocab = ctx.pick(300, 4096, 4096)

    def ours():
        BPETokenizer.train(chunks, vocab_size=vocab)

    def hf():
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(chunks, trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], show_progress=False))
    t = interleaved({"omicskern BPETokenizer.train": ours, "HF BpeTrainer": hf}, clock="wall", repeats=1,
                    min_repeats=1, warmup=0)
    descs = {"omicskern BPETokenizer.train": "omicskern BPE trainer (C++)",
             "HF BpeTrainer": "baseline: HF tokenizers BpeTrainer, Whitespace pre-tokenizer, same specials"}
    return ab_records("BPE training", dict(vocab_size=vocab, bp=sum(map(len, chunks))), t, descs, "HF BpeTrainer",
                      "time", "s")
