"""encode_batch(return_token_spans=True): each token's [start, end) in its input sequence.

Every tokenizer is checked against an independent per-sequence Python reference (and the BPE
against Hugging Face ``tokenizers``' ``Encoding.offsets`` for the same tokenizer.json), with and
without special tokens, truncated on both sides, on random sequences (odd lengths, N runs, lower
case) and on the lambda phage genome.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from omicskern.batch import Batch
from omicskern.io.fasta import FastaFile
from omicskern.tokenizers import BPETokenizer, CharTokenizer, KmerTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::omicskern.errors.UnknownTokensWarning")

DATA = Path(__file__).resolve().parents[1] / "data"
DNABERT2 = DATA / "dnabert2_tokenizer.json"
BPE_ENGINES = ("auto", "heap", "bucket", "small_windows", "windows", "backtrack")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# -- inputs ------------------------------------------------------------------------------------

def random_dna(rng: random.Random, n: int, *, n_frac: float = 0.05, lower_frac: float = 0.2) -> str:
    out = []
    while len(out) < n:
        r = rng.random()
        if r < n_frac:
            out.extend("N" * rng.randint(1, 9))  # runs of N
        else:
            out.append(rng.choice("ACGT"))
    s = out[:n]
    # soft-masked stretches
    i = 0
    while i < n:
        if rng.random() < lower_frac / 10:
            j = min(n, i + rng.randint(1, 30))
            s[i:j] = [c.lower() for c in s[i:j]]
            i = j
        i += 1
    return "".join(s)


def random_batch(seed: int, count: int = 40, max_len: int = 301) -> list[str]:
    rng = random.Random(seed)
    lengths = [0, 1, 2, 5, 7] + [rng.randrange(1, max_len) | 1 for _ in range(count - 5)]  # odd lengths
    return [random_dna(rng, n) for n in lengths]


@pytest.fixture(scope="module")
def lambda_genome() -> str:
    with FastaFile(DATA / "lambda_phage.fa") as fa:
        return next(iter(fa.records()))[1]


def lambda_chunks(genome: str, seed: int, count: int = 12) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randrange(100, 4000) | 1
        a = rng.randrange(0, len(genome) - n)
        s = genome[a:a + n]
        if rng.random() < 0.5:  # soft-mask a stretch and add an N run
            b = rng.randrange(0, n)
            s = s[:b] + s[b:b + 200].lower() + s[b + 200:]
            c = rng.randrange(0, len(s))
            s = s[:c] + "N" * rng.randint(1, 20) + s[c:]
        out.append(s)
    return out


# -- slow references (one sequence at a time, plain Python) -------------------------------------

def ref_char(seq) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(seq))]


def ref_nt(seq: str, k: int) -> list[tuple[int, int]]:
    """Nucleotide Transformer: pieces between N (one token each) cut into k-mers, leftovers single."""
    spans, i, n = [], 0, len(seq)
    while i < n:
        if seq[i].upper() not in "ACGT":
            spans.append((i, i + 1))
            i += 1
            continue
        j = i
        while j < n and seq[j].upper() in "ACGT":
            j += 1
        p = i
        while p + k <= j:
            spans.append((p, p + k))
            p += k
        spans.extend((q, q + 1) for q in range(p, j))
        i = j
    return spans


def ref_overlap(seq: str, k: int) -> list[tuple[int, int]]:
    return [(i, i + k) for i in range(len(seq) - k + 1)]


def with_specials_and_truncation(content: list[tuple[int, int]], n: int, n_prefix: int, n_suffix: int,
                                 max_length: int | None, keep_end: bool) -> list[tuple[int, int]]:
    if max_length is not None:
        budget = max_length - n_prefix - n_suffix
        if len(content) > budget:
            content = content[len(content) - budget:] if keep_end else content[:budget]
    return [(0, 0)] * n_prefix + list(content) + [(n, n)] * n_suffix


def rows_of(batch: Batch) -> list[list[tuple[int, int]]]:
    cu = batch.cu_seqlens
    sp = batch.token_spans
    return [[tuple(x) for x in sp[cu[i]:cu[i + 1]].tolist()] for i in range(len(batch))]


def assert_tiles(spans: list[tuple[int, int]], n: int) -> None:
    """Non-overlapping tokens: sorted, contiguous, covering [0, n) exactly."""
    pos = 0
    for a, b in spans:
        assert a == pos and b > a, (spans, n)
        pos = b
    assert pos == n


# -- per tokenizer -------------------------------------------------------------------------------

TOKENIZERS = {
    "char": lambda: CharTokenizer(),
    "char_iupac_unk": lambda: CharTokenizer("iupac", on_invalid="unk"),
    "nt6": lambda: KmerTokenizer(6, "nt"),
    "nt3": lambda: KmerTokenizer(3, "nt"),
    "nt5_unk": lambda: KmerTokenizer(5, "nt", on_invalid="unk"),
    "overlap3": lambda: KmerTokenizer(3, "overlap"),
    "overlap6": lambda: KmerTokenizer(6, "overlap"),
}


def reference(name: str, tok, seq: str) -> list[tuple[int, int]]:
    if name.startswith("char"):
        return ref_char(seq)
    if name.startswith("nt"):
        return ref_nt(seq, tok.k)
    return ref_overlap(seq, tok.k)


def check_token_text(name: str, tok, seq: str, ids, spans) -> None:
    """Each token's text is the (upper-cased) text of its span."""
    for i, (a, b) in zip(ids.tolist(), spans):
        text = seq[a:b].upper()
        t = tok.id_to_token(i)
        if name.startswith("overlap") and t == "[UNK]":
            assert set(text) - set("ACGT")
        else:
            assert t == text, (t, text, a, b)


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("specials", [True, False])
def test_spans_match_reference(name, seed, specials):
    tok = TOKENIZERS[name]()
    seqs = random_batch(seed)
    b = tok.encode_batch(seqs, padding=False, add_special_tokens=specials, return_token_spans=True)
    assert b.token_spans.shape == (b.num_tokens, 2) and b.token_spans.dtype == np.int64
    p = len(tok.prefix_ids) if specials else 0
    s = len(tok.suffix_ids) if specials else 0
    plain = tok.encode_batch(seqs, padding=False, add_special_tokens=specials)
    np.testing.assert_array_equal(b.input_ids, plain.input_ids)
    np.testing.assert_array_equal(b.cu_seqlens, plain.cu_seqlens)
    assert plain.token_spans is None
    for i, (seq, row) in enumerate(zip(seqs, rows_of(b))):
        content = reference(name, tok, seq)
        assert row == with_specials_and_truncation(content, len(seq), p, s, None, False), (name, i, seq)
        check_token_text(name, tok, seq, b[i][p:len(row) - s], row[p:len(row) - s])
        if not name.startswith("overlap"):
            assert_tiles(row[p:len(row) - s], len(seq))


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [2, 3, 9, 40])
def test_spans_truncated(name, side, max_length):
    tok = TOKENIZERS[name]()
    seqs = random_batch(10 + max_length)
    p, s = len(tok.prefix_ids), len(tok.suffix_ids)
    if max_length < p + s:
        return
    b = tok.encode_batch(seqs, padding=False, truncation=True, max_length=max_length, truncation_side=side,
                         return_token_spans=True, return_soft_mask=True)
    plain = tok.encode_batch(seqs, padding=False, truncation=True, max_length=max_length, truncation_side=side,
                             return_soft_mask=True)
    np.testing.assert_array_equal(b.input_ids, plain.input_ids)
    np.testing.assert_array_equal(b.soft_mask, plain.soft_mask)
    for i, (seq, row) in enumerate(zip(seqs, rows_of(b))):
        want = with_specials_and_truncation(reference(name, tok, seq), len(seq), p, s, max_length, side == "left")
        assert row == want, (name, i, seq)
        # soft mask agrees with the spans: a token is soft-masked iff its span holds lower case
        for (a, c), m in zip(row[p:len(row) - s], b.soft_mask[b.cu_seqlens[i] + p:b.cu_seqlens[i + 1] - s]):
            assert bool(m) == any(ch.islower() for ch in seq[a:c])


@pytest.mark.parametrize("name", ["char", "nt6", "overlap6"])
def test_spans_lambda_genome(name, lambda_genome):
    tok = TOKENIZERS[name]()
    seqs = lambda_chunks(lambda_genome, 3) + [lambda_genome]
    b = tok.encode_batch(seqs, padding=False, return_token_spans=True)
    p, s = len(tok.prefix_ids), len(tok.suffix_ids)
    for seq, row in zip(seqs, rows_of(b)):
        assert row == with_specials_and_truncation(reference(name, tok, seq), len(seq), p, s, None, False)
        if name != "overlap6":
            assert_tiles(row[p:len(row) - s], len(seq))


@pytest.mark.parametrize("name", ["char", "nt6", "nt3", "overlap3"])
def test_spans_do_not_depend_on_threads_or_chunks(name, lambda_genome):
    tok = TOKENIZERS[name]()
    seqs = lambda_chunks(lambda_genome, 5) + [lambda_genome]
    ref = tok.encode_batch(seqs, padding=False, return_token_spans=True, num_threads=1)
    tok._chunk = 37
    got = tok.encode_batch(seqs, padding=False, return_token_spans=True, num_threads=2)
    np.testing.assert_array_equal(got.input_ids, ref.input_ids)
    np.testing.assert_array_equal(got.token_spans, ref.token_spans)


def test_nt_remapped_vocab_spans():
    """A vocab.txt whose ids are not the built-in layout (gather after the encoder) keeps spans."""
    tokens = list(KmerTokenizer(4, "nt")._tokens)
    perm = tokens[:6] + tokens[6:][::-1]  # k-mers and single bases in another order
    tok = KmerTokenizer(4, "nt", vocab_tokens=perm)
    assert tok._remap is not None
    seqs = random_batch(7)
    b = tok.encode_batch(seqs, padding=False, return_token_spans=True)
    for seq, row in zip(seqs, rows_of(b)):
        assert row == with_specials_and_truncation(ref_nt(seq, 4), len(seq), 1, 0, None, False)


def test_padding_raises_and_default_costs_nothing():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"token_spans need padding=False \(a ragged Batch\)"):
        tok.encode_batch(["ACGT"], return_token_spans=True)
    with pytest.raises(ValueError, match="token_spans need padding=False"):
        tok.encode_batch(["ACGT"], padding="max_length", max_length=8, return_token_spans=True)
    assert tok.encode_batch(["ACGT"], padding=False).token_spans is None


def test_select_and_empty_batch_keep_spans():
    tok = KmerTokenizer(3, "nt")
    b = tok.encode_batch(["ACGTA", "", "GGGGGGG"], padding=False, return_token_spans=True)
    sub = b[[2, 0]]
    assert rows_of(sub) == [[(0, 0), (0, 3), (3, 6), (6, 7)], [(0, 0), (0, 3), (3, 4), (4, 5)]]
    assert rows_of(b)[1] == [(0, 0)]
    e = tok.encode_batch([], padding=False, return_token_spans=True)
    assert e.token_spans.shape == (0, 2)


def test_bytes_input_and_non_ascii_str():
    # bytes: positions are bytes; str: characters (the C++ reads UTF-8 bytes, one token per byte)
    tok = CharTokenizer(on_invalid="unk")
    b = tok.encode_batch([b"AC\xc3\xa9GT", "ACéGT", "€A"], padding=False, add_special_tokens=True,
                         return_token_spans=True)
    rows = rows_of(b)
    assert rows[0] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 6)]
    # é is two bytes -> two [UNK] tokens, both covering character 2
    assert rows[1] == [(0, 0), (0, 1), (1, 2), (2, 3), (2, 3), (3, 4), (4, 5), (5, 5)]
    assert rows[2] == [(0, 0), (0, 1), (0, 1), (0, 1), (1, 2), (2, 2)]
    nt = KmerTokenizer(3, "nt", on_invalid="unk")
    r = rows_of(nt.encode_batch(["ACGéACGTA"], padding=False, return_token_spans=True))[0]
    assert r == [(0, 0), (0, 3), (3, 4), (3, 4), (4, 7), (7, 8), (8, 9)]
    # memoryview / numpy inputs: bytes
    arr = np.frombuffer(b"ACGTNACG", dtype=np.uint8)
    r = rows_of(KmerTokenizer(3, "nt").encode_batch([memoryview(b"ACGTNACG"), arr], padding=False,
                                                     return_token_spans=True))
    assert r[0] == r[1] == [(0, 0), (0, 3), (3, 4), (4, 5), (5, 8)]


# -- BPE: Hugging Face offsets are the oracle ---------------------------------------------------

tokenizers = pytest.importorskip("tokenizers")


def hf_rows(hf, seqs, add_special_tokens):
    encs = hf.encode_batch(seqs, add_special_tokens=add_special_tokens)
    return [(e.ids, [tuple(o) for o in e.offsets]) for e in encs]


def check_bpe_vs_hf(tok: BPETokenizer, hf, seqs, *, specials=True, uppercase_oracle=False,
                    max_length=None, side="right", tiles=False):
    p = len(tok.prefix_ids) if specials else 0
    s = len(tok.suffix_ids) if specials else 0
    b = tok.encode_batch(seqs, padding=False, add_special_tokens=specials, return_token_spans=True,
                         truncation=max_length is not None, max_length=max_length, truncation_side=side)
    oracle_in = [q.translate(_UPPER) for q in seqs] if uppercase_oracle else seqs
    hf_full = hf_rows(hf, oracle_in, False)  # content tokens, untruncated
    hf_spec = hf_rows(hf, oracle_in, True)
    for i, (seq, row) in enumerate(zip(seqs, rows_of(b))):
        ids, offs = hf_full[i]
        want = with_specials_and_truncation(offs, len(seq), p, s, max_length, side == "left")
        assert row == want, (i, seq, row, want)
        content_ids = b[i][p:len(row) - s].tolist()
        if max_length is None:
            assert content_ids == ids
            if specials:  # HF's own offsets for the specials are (0, 0)
                sid, soffs = hf_spec[i]
                assert b[i].tolist() == sid
                assert soffs[:p] == [(0, 0)] * p and soffs[len(soffs) - s:] == [(0, 0)] * s
                assert soffs[p:len(soffs) - s] == row[p:len(row) - s]
        if tiles and max_length is None:
            assert_tiles(row[p:len(row) - s], len(seq))
    return b


@pytest.fixture(scope="module")
def hf_dnabert2():
    return tokenizers.Tokenizer.from_file(str(DNABERT2))


@pytest.mark.parametrize("engine", BPE_ENGINES)
@pytest.mark.parametrize("uppercase", [False, True])
@pytest.mark.parametrize("specials", [True, False])
def test_bpe_spans_match_hf(hf_dnabert2, engine, uppercase, specials):
    tok = BPETokenizer.from_file(DNABERT2, uppercase=uppercase)
    tok.algorithm = engine
    seqs = random_batch(20 + uppercase, count=30, max_len=700)
    check_bpe_vs_hf(tok, hf_dnabert2, seqs, specials=specials, uppercase_oracle=uppercase, tiles=True)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [2, 3, 7, 50])
def test_bpe_spans_truncated(hf_dnabert2, side, max_length):
    tok = BPETokenizer.from_file(DNABERT2, uppercase=True)
    seqs = random_batch(30 + max_length, count=25)
    check_bpe_vs_hf(tok, hf_dnabert2, seqs, uppercase_oracle=True, max_length=max_length, side=side)


def test_bpe_spans_lambda_genome(hf_dnabert2, lambda_genome):
    tok = BPETokenizer.from_file(DNABERT2, uppercase=True)
    seqs = lambda_chunks(lambda_genome, 4) + [lambda_genome]
    check_bpe_vs_hf(tok, hf_dnabert2, seqs, uppercase_oracle=True, tiles=True)
    check_bpe_vs_hf(tok, hf_dnabert2, seqs[:6], uppercase_oracle=True, max_length=100, side="left")
    for engine in ("small_windows", "heap"):
        tok.algorithm = engine
        check_bpe_vs_hf(tok, hf_dnabert2, seqs[-3:], uppercase_oracle=True, tiles=True)


BPE_TEXTS = [
    "ACGT ACGGT\tNNA  GATTACA\n",        # several words (Whitespace pre-tokenizer)
    "  ACGT,ACG;;TT-AAA ",                 # punctuation splits words
    "ACGT[CLS]GGA[SEP] [MASK]x",            # literal special tokens in the text
    "ACGTéGG€TA𝔸CC",                        # non-ASCII: [UNK] per character, offsets in characters
    "ééé ACGT ü",
    "nnnnACGTacgtNNNN",
    "XYZ123___ACGT",
    "",
    "   ",
]


@pytest.mark.parametrize("engine", BPE_ENGINES)
def test_bpe_spans_text_inputs(hf_dnabert2, engine):
    tok = BPETokenizer.from_file(DNABERT2)
    tok.algorithm = engine
    for specials in (True, False):
        check_bpe_vs_hf(tok, hf_dnabert2, BPE_TEXTS, specials=specials)


def _variant(**changes) -> str:
    data = json.loads(DNABERT2.read_text())
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return json.dumps(data)


def _with_byte_fallback(byte_values=range(256), fuse_unk=False) -> str:
    data = json.loads(DNABERT2.read_text())
    vocab = data["model"]["vocab"]
    top = max(vocab.values()) + 1
    for j, i in enumerate(byte_values):
        vocab[f"<0x{i:02X}>"] = top + j
    data["model"]["byte_fallback"] = True
    data["model"]["fuse_unk"] = fuse_unk
    return json.dumps(data)


def _with_stripped_added_tokens() -> str:
    data = json.loads(DNABERT2.read_text())
    top = max(max(data["model"]["vocab"].values()), max(t["id"] for t in data["added_tokens"])) + 1
    data["added_tokens"] += [
        {"id": top, "content": "<L>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False,
         "special": True},
        {"id": top + 1, "content": "<R>", "single_word": False, "lstrip": False, "rstrip": True, "normalized": False,
         "special": False},
    ]
    return json.dumps(data)


VARIANTS = {
    "fuse_unk": lambda: _variant(model__fuse_unk=True),
    "no_unk": lambda: _variant(model__unk_token=None),
    "byte_fallback": _with_byte_fallback,
    # only the bytes of é: other non-ASCII characters are [UNK] while é falls back to bytes, which
    # HF adds before a pending [UNK] (its offsets come out of order; ours follow HF's)
    "byte_fallback_partial": lambda: _with_byte_fallback((0xC3, 0xA9)),
    "byte_fallback_partial_fused": lambda: _with_byte_fallback((0xC3, 0xA9), fuse_unk=True),
    "stripped_added": _with_stripped_added_tokens,
    "whitespace_split": lambda: _variant(pre_tokenizer={"type": "WhitespaceSplit"}),
    "no_pre_tokenizer": lambda: _variant(pre_tokenizer=None),
    "lowercase_normalizer": lambda: _variant(normalizer={"type": "Lowercase"}),
}
VARIANT_TEXTS = BPE_TEXTS + ["AC <L>GT  <L> <R>  AC<R>G", "<L><R>NNéACGT", "ACGTÿ\x7fACG", "A€éA€€éG€", "ü€éé€A"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("engine", ["auto", "heap", "small_windows"])
def test_bpe_spans_pipeline_variants(variant, engine):
    text = VARIANTS[variant]()
    hf = tokenizers.Tokenizer.from_str(text)
    tok = BPETokenizer.from_json_str(text)
    tok.algorithm = engine
    texts = [t for t in VARIANT_TEXTS if variant != "lowercase_normalizer" or t.isascii()]
    texts += random_batch(40, count=10)
    for specials in (True, False):
        check_bpe_vs_hf(tok, hf, texts, specials=specials)


def test_bpe_trained_tokenizer_spans(lambda_genome):
    """A freshly trained vocabulary (HF loads the file): spans = HF offsets, tiles on DNA."""
    tok = BPETokenizer.train([lambda_genome[i:i + 500] for i in range(0, 20000, 500)], vocab_size=300)
    hf = tokenizers.Tokenizer.from_str(tok.to_json_str())
    seqs = lambda_chunks(lambda_genome, 9, count=6)
    check_bpe_vs_hf(tok, hf, [q.upper() for q in seqs], tiles=True)
    check_bpe_vs_hf(tok, hf, seqs, max_length=33, side="left")
