"""The backtracking BPE encoder (``algorithm="backtrack"``, the default where it applies).

Its exactness rests on two load-time facts, each tested here against Hugging Face directly:
a token is in the trie iff HF encodes its string as that token alone ("valid"), and the O(depth)
pair test says "compatible" iff HF encodes the two tokens' concatenation as exactly those two.
Then whole encodings are compared with HF on vocabularies where incompatibilities are frequent
(tiny vocabularies trained by HF's BpeTrainer on small random corpora), long homopolymer runs,
tandem repeats, and N / lower-case interruptions.
"""

from __future__ import annotations

import json
import random

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from omicskern.tokenizers.bpe import BPETokenizer  # noqa: E402

from .test_bpe import DNABERT2, SPECIALS, assert_parity, random_dna  # noqa: E402

ENGINES = ("backtrack", "auto", "heap")
# N / lower-case interruptions are parity inputs here; their UnknownTokensWarning is tested in test_bpe.py
pytestmark = pytest.mark.filterwarnings("ignore::omicskern.errors.UnknownTokensWarning")


def random_vocab(seed: int, vocab_size: int, alphabet: str, whitespace: bool) -> tuple[BPETokenizer, Tokenizer]:
    """HF BpeTrainer on a small random corpus (skewed letters and runs: many conflicting merges)."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(40):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(alphabet) * rng.randint(2, 30))  # homopolymer
            elif r < 0.5:
                parts.append(random_dna(rng, rng.randint(2, 4), alphabet) * rng.randint(2, 10))  # tandem repeat
            else:
                parts.append(random_dna(rng, rng.randint(1, 60), alphabet))
        corpus.append("".join(parts))
    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    if whitespace:
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       show_progress=False))
    text = hf.to_str()
    return BPETokenizer.from_json_str(text), Tokenizer.from_str(text)


def token_strings(tok: BPETokenizer) -> dict[int, str]:
    return {i: t for t, i in tok.get_vocab().items() if t not in SPECIALS}


def is_valid(tok: BPETokenizer, i: int) -> bool:
    try:
        tok._model.compatible(i, i)
        return True
    except ValueError:
        return False


VOCAB_CASES = [
    pytest.param(1, 20, "ACGT", False, id="seed1-V20-ACGT"),
    pytest.param(2, 60, "ACGT", False, id="seed2-V60-ACGT"),
    pytest.param(3, 150, "AACGTTT", False, id="seed3-V150-skewed"),
    pytest.param(4, 300, "ACGT", True, id="seed4-V300-ws"),
    pytest.param(5, 40, "AC", False, id="seed5-V40-binary"),
    pytest.param(6, 120, "ACGTN", False, id="seed6-V120-ACGTN"),
]


@pytest.mark.parametrize("seed,vocab_size,alphabet,whitespace", VOCAB_CASES)
def test_valid_tokens_and_pair_test_match_hf(seed, vocab_size, alphabet, whitespace):
    """Trie membership == HF encodes the token alone as itself; pair test == HF on the concatenation."""
    tok, hf = random_vocab(seed, vocab_size, alphabet, whitespace)
    assert tok.backtracking
    strings = token_strings(tok)
    valid = []
    for i, s in strings.items():
        alone = hf.encode(s, add_special_tokens=False).ids == [i]
        assert is_valid(tok, i) == alone, f"token {s!r}"
        if alone:
            valid.append(i)
    rng = random.Random(seed)
    pairs = [(a, b) for a in valid for b in valid] if len(valid) <= 70 else \
        [(rng.choice(valid), rng.choice(valid)) for _ in range(4000)]
    texts = [strings[a] + strings[b] for a, b in pairs]
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    n_incompatible = 0
    for (a, b), w in zip(pairs, want):
        got = tok._model.compatible(a, b)
        assert got == (w == [a, b]), f"pair ({strings[a]!r}, {strings[b]!r}): HF gives {w}"
        n_incompatible += not got
    assert n_incompatible > len(pairs) // 20  # the vocabularies really exercise the failing branch


@pytest.mark.parametrize("seed,vocab_size,alphabet,whitespace", VOCAB_CASES)
def test_random_vocab_parity(seed, vocab_size, alphabet, whitespace):
    tok, hf = random_vocab(seed, vocab_size, alphabet, whitespace)
    rng = random.Random(100 + seed)
    letters = alphabet.replace("N", "")
    seqs = [random_dna(rng, n, alphabet) for n in (1, 2, 3, 5, 17, 113, 1000, 5000)]
    seqs += ["".join(rng.choice(letters) * rng.randint(1, 50) for _ in range(60)) for _ in range(4)]  # runs
    seqs += ["".join(random_dna(rng, rng.randint(1, 5), letters) * rng.randint(1, 40) for _ in range(30))
             for _ in range(4)]  # tandem repeats
    seqs += [random_dna(rng, 2000, letters + "Nn" + letters.lower())]  # N and lower case cut words
    assert_parity(tok, hf, seqs, engines=ENGINES)


def test_homopolymers_and_repeats_dnabert2():
    """Every run length 1..200 of each base, dinucleotide and trinucleotide repeats, and runs cut by N
    or lower case, on DNABERT-2's vocabulary."""
    tok = BPETokenizer.from_file(DNABERT2)
    hf = Tokenizer.from_file(str(DNABERT2))
    assert tok.backtracking
    seqs = [b * n for b in "ACGT" for n in range(1, 201)]
    seqs += [u * n for u in ("AT", "CG", "AC", "GT", "CAG", "TTA") for n in range(1, 60, 3)]
    rng = random.Random(12)
    seqs += ["A" * 5000, "T" * 4097 + "G" + "T" * 4096, "AT" * 3000 + "C"]
    seqs += ["".join(rng.choice(["A" * rng.randint(1, 40), "N", "n", "a" * rng.randint(1, 5), "ACGT",
                                 random_dna(rng, rng.randint(1, 30))]) for _ in range(100)) for _ in range(10)]
    assert_parity(tok, hf, seqs, engines=ENGINES)


def test_not_applicable_tables_fall_back_exactly():
    """Affixes, non-monotone merges and two merges making one token: no backtracking, still HF's ids."""
    vocab = {"A": 0, "C": 1, "AA": 2, "AC": 3, "AAC": 4, "CC": 5}
    merges = [["A", "A"], ["A", "C"], ["AA", "C"], ["A", "AC"], ["C", "C"]]  # AAC made twice
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": merges}}
    text = json.dumps(doc)
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert tok.monotone_merges and not tok.backtracking
    rng = random.Random(3)
    assert_parity(tok, hf, [random_dna(rng, n, "AAC") for n in (1, 5, 300)], engines=ENGINES)
    with pytest.raises(ValueError, match="not built"):
        tok._model.compatible(0, 1)
    hf2 = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    hf2.train_from_iterator(["ACGTACGGA CATTAG"] * 3, trainers.BpeTrainer(
        vocab_size=30, special_tokens=SPECIALS, continuing_subword_prefix="##", show_progress=False))
    assert not BPETokenizer.from_json_str(hf2.to_str()).backtracking


@pytest.mark.parametrize("seed", range(10, 30))
def test_many_random_vocabularies(seed):
    """20 more random corpora / sizes / alphabets: short and long random, run-rich inputs."""
    rng = random.Random(seed)
    alphabet = rng.choice(["ACGT", "AC", "ACG", "AAAACGT", "ACGTN"])
    tok, hf = random_vocab(seed, rng.randint(8, 250), alphabet, rng.random() < 0.3)
    assert tok.backtracking
    letters = alphabet.replace("N", "")
    seqs = [random_dna(rng, rng.randint(1, 3000), alphabet) for _ in range(6)]
    seqs += ["".join(rng.choice(letters) * rng.randint(1, 80) for _ in range(40)) for _ in range(3)]
    assert_parity(tok, hf, seqs, engines=("backtrack", "heap"))


@pytest.mark.parametrize("fuse_unk", [False, True], ids=["separate-unk", "fuse-unk"])
def test_unknown_characters_split_words_exactly(fuse_unk):
    """N / lower case / other ASCII inside a word: [UNK]s that no merge uses cut it into letter runs,
    each encoded by backtracking; HF's [UNK] rules (fused or not) and the soft mask are kept."""
    rng = random.Random(21 + fuse_unk)
    corpus = [random_dna(rng, rng.randint(20, 300), "ACGTTTAAA") for _ in range(50)]
    hf = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=fuse_unk))
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS,
                                                       show_progress=False))
    text = hf.to_str()
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert tok.backtracking
    seqs = [random_dna(rng, n, "ACGTACGTNnacgt-*") for n in (1, 2, 7, 100, 3000)]
    seqs += ["N" * 50, "ACGT" + "N" * 1000 + "TTTT", "acgtACGTnnnAAAA" * 20, "A" * 300 + "x" + "A" * 300]
    assert_parity(tok, hf, seqs, engines=ENGINES)
    up = BPETokenizer.from_json_str(text, uppercase=True)
    batch = up.encode_batch(seqs, padding=False, return_soft_mask=True, add_special_tokens=False)
    for i, s in enumerate(seqs):
        enc = hf.encode(s.upper(), add_special_tokens=False)
        assert batch[i].tolist() == enc.ids
        mask = batch.soft_mask[batch.cu_seqlens[i]:batch.cu_seqlens[i + 1]].tolist()
        assert mask == [any(c.islower() for c in s[a:b]) for a, b in enc.offsets]


def test_unk_used_by_a_merge_is_no_boundary():
    """An [UNK] that a merge consumes can merge with its neighbours: no splitting, exact engines."""
    vocab = {"[UNK]": 0, "A": 1, "C": 2, "AC": 3, "[UNK]A": 4, "CC": 5}
    merges = [["A", "C"], ["[UNK]", "A"], ["C", "C"]]
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": merges}}
    text = json.dumps(doc)
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert tok.backtracking
    rng = random.Random(8)
    assert_parity(tok, hf, [random_dna(rng, n, "AACCN") for n in (1, 3, 10, 500)] + ["NAC", "ACNACC"],
                  engines=ENGINES)
