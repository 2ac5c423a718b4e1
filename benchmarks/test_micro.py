"""Microbenchmarks of the hot functions, for pytest-benchmark:

    pytest benchmarks --benchmark-only --benchmark-json=micro.json
    python -c "from omicskern.bench.pytest_json import load; from omicskern.bench.records import \
append_jsonl; append_jsonl('benchmarks/results/micro_cpu.jsonl', load('micro.json'))"

Each group pairs omicskern with its baseline (same inputs), so pytest-benchmark's group table
shows them side by side. Kept out of the test suite: CI time stays the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _common import ROOT

LAMBDA = ROOT / "omicskern" / "data" / "lambda_phage.fa"


@pytest.fixture(scope="module")
def genome() -> str:
    from omicskern.io.fasta import FastaFile

    with FastaFile(LAMBDA) as fa:
        return fa.sequence(fa.names[0]).upper()


@pytest.mark.benchmark(group="char encode (lambda phage, 10 kbp chunks)")
def test_char_omicskern(benchmark, genome):
    from omicskern.tokenizers import CharTokenizer

    tok = CharTokenizer()
    chunks = [genome[i:i + 10_000] for i in range(0, len(genome), 10_000)]
    benchmark(lambda: tok.encode_batch(chunks, padding=False, num_threads=1))


@pytest.mark.benchmark(group="char encode (lambda phage, 10 kbp chunks)")
def test_char_numpy_lookup(benchmark, genome):
    from omicskern.tokenizers import CharTokenizer

    lut = np.full(256, -1, np.int32)
    for c, i in CharTokenizer().get_vocab().items():
        if len(c) == 1:
            lut[ord(c)] = i
    chunks = [genome[i:i + 10_000] for i in range(0, len(genome), 10_000)]
    benchmark(lambda: [lut[np.frombuffer(s.encode("ascii"), np.uint8)] for s in chunks])


@pytest.mark.benchmark(group="BPE encode (DNABERT-2, lambda phage)")
def test_bpe_omicskern(benchmark, genome):
    from omicskern.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer.from_file(ROOT / "tests" / "data" / "dnabert2_tokenizer.json")
    benchmark(lambda: tok.encode_batch([genome], padding=False, num_threads=1))


@pytest.mark.benchmark(group="BPE encode (DNABERT-2, lambda phage)")
def test_bpe_hf(benchmark, genome):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(ROOT / "tests" / "data" / "dnabert2_tokenizer.json"))
    benchmark(lambda: tok.encode_batch([genome]))


def _cells(n=500, genes=2000, seed=0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = sp.random(n, genes, density=0.1, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.ceil(X.data * 20).astype(np.float32)
    keys = [f"ENSG{j:011d}" for j in range(genes)]
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{k: 4 + j for j, k in enumerate(keys)}}
    medians = {k: float(rng.lognormal(0, 1)) for k in keys}
    return X, keys, tokens, medians


@pytest.mark.benchmark(group="rank-value (500 cells x 2k genes)")
def test_rank_value_omicskern(benchmark):
    from omicskern.tokenizers import RankValueTokenizer

    X, keys, tokens, medians = _cells()
    tok = RankValueTokenizer(tokens, medians, preset="V2", integer_check="ignore")
    benchmark(lambda: tok.tokenize(X, gene_ids=keys))


@pytest.mark.benchmark(group="rank-value (500 cells x 2k genes)")
def test_rank_value_numpy(benchmark):
    X, keys, tokens, medians = _cells()
    tok_ids = np.array([tokens[k] for k in keys])
    med = np.array([medians[k] for k in keys])

    def run():
        n = np.asarray(X.sum(axis=1)).ravel()
        Y = X.copy()
        Y.data = Y.data / np.repeat(n, np.diff(Y.indptr)) * 10_000 / med[Y.indices]
        return [tok_ids[Y.indices[a:b][np.argsort(-Y.data[a:b])]] for a, b in zip(Y.indptr[:-1], Y.indptr[1:])]
    benchmark(run)


@pytest.fixture(scope="module")
def conv_inputs():
    g = torch.Generator().manual_seed(0)
    u, gate = torch.randn(4, 64, 4096, generator=g), torch.randn(4, 64, 4096, generator=g)
    return u, torch.randn(64, 4096, generator=g) / 64, torch.randn(64, generator=g), gate


@pytest.mark.benchmark(group="fft_conv fwd (B4 H64 L4096 fp32)")
def test_fft_conv_omicskern(benchmark, conv_inputs):
    from omicskern.ops.fftconv import fft_conv

    u, k, D, gate = conv_inputs
    with torch.no_grad():
        benchmark(lambda: fft_conv(u, k, D, gate=gate))


@pytest.mark.benchmark(group="fft_conv fwd (B4 H64 L4096 fp32)")
def test_fft_conv_torch_fft_hyenadna(benchmark, conv_inputs):
    from omicskern.ops.fftconv import fft_conv_hyenadna_ref

    with torch.no_grad():
        benchmark(lambda: fft_conv_hyenadna_ref(*conv_inputs))


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 512, 4, 64, generator=g) for _ in range(3)]


@pytest.mark.benchmark(group="attention fwd (B2 L512 H4 D64 fp32, ALiBi)")
def test_attention_omicskern(benchmark, qkv):
    from omicskern.ops.attention import alibi_slopes, attention

    with torch.no_grad():
        benchmark(lambda: attention(*qkv, alibi_slopes=alibi_slopes(4)))


@pytest.mark.benchmark(group="attention fwd (B2 L512 H4 D64 fp32, ALiBi)")
def test_attention_eager(benchmark, qkv):
    from omicskern.ops.attention import alibi_slopes, attention_ref

    with torch.no_grad():
        benchmark(lambda: attention_ref(*qkv, alibi_slopes=alibi_slopes(4), upcast=False))
