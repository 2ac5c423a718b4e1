"""BPETokenizer: ids identical to Hugging Face `tokenizers` for the same tokenizer.json.

Every parity check runs all merge engines (HF's heap, the bucket queue, the windowed long-word
path with real and with tiny windows, the backtracking encoder), so that each is compared with HF
on every input.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # noqa: E402

from omicskern.errors import InvalidSequenceError  # noqa: E402
from omicskern.errors import UnknownTokensWarning  # noqa: E402
from omicskern.tokenizers.bpe import BPETokenizer  # noqa: E402

# Parity inputs include lower case and unknown characters on purpose; their (expected) warning is
# tested on its own below (pytest.warns records it whatever this filter says).
pytestmark = pytest.mark.filterwarnings("ignore::omicskern.errors.UnknownTokensWarning")

DATA = Path(__file__).resolve().parents[1] / "data"
DNABERT2 = DATA / "dnabert2_tokenizer.json"
ENGINES = ("auto", "heap", "bucket", "small_windows", "windows", "backtrack")
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def read_fasta(path: Path) -> str:
    return "".join(line.strip() for line in path.read_text().splitlines() if not line.startswith(">"))


@pytest.fixture(scope="module")
def lambda_seq() -> str:
    return read_fasta(DATA / "lambda_phage.fa")


def assert_parity(tok: BPETokenizer, hf: Tokenizer, seqs: list[str], engines=ENGINES) -> None:
    want = [e.ids for e in hf.encode_batch(seqs)]
    want_plain = [e.ids for e in hf.encode_batch(seqs, add_special_tokens=False)]
    for engine in engines:
        tok.algorithm = engine
        got = tok.encode_batch(seqs, padding=False)
        plain = tok.encode_batch(seqs, padding=False, add_special_tokens=False)
        for i, s in enumerate(seqs):
            assert got[i].tolist() == want[i], f"engine={engine} seq {i} {s[:60]!r}"
            assert plain[i].tolist() == want_plain[i], f"engine={engine} seq {i} (no specials) {s[:60]!r}"
    tok.algorithm = "auto"


def random_dna(rng: random.Random, n: int, alphabet: str = "ACGT") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# -- vocabularies ---------------------------------------------------------------------------------
def hf_trained(corpus: list[str], vocab_size: int, *, whitespace: bool, template: bool, **model_kw) -> Tokenizer:
    hf = Tokenizer(models.BPE(unk_token="[UNK]", **model_kw))
    if whitespace:
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer_kw = {}
    if model_kw.get("continuing_subword_prefix"):
        trainer_kw["continuing_subword_prefix"] = model_kw["continuing_subword_prefix"]
    if model_kw.get("end_of_word_suffix"):
        trainer_kw["end_of_word_suffix"] = model_kw["end_of_word_suffix"]
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       show_progress=False, **trainer_kw))
    if template:
        hf.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
            ("[CLS]", hf.token_to_id("[CLS]")), ("[SEP]", hf.token_to_id("[SEP]"))])
    return hf


def pair(hf: Tokenizer, **kw) -> tuple[BPETokenizer, Tokenizer]:
    """Our tokenizer from HF's serialised file, and HF re-loaded from the same text."""
    text = hf.to_str()
    return BPETokenizer.from_json_str(text, **kw), Tokenizer.from_str(text)


@pytest.fixture(scope="module")
def vocabularies(lambda_seq: str) -> dict[str, tuple[BPETokenizer, Tokenizer]]:
    rng = random.Random(7)
    chunks = [lambda_seq[i:i + 2000] for i in range(0, len(lambda_seq), 2000)]
    noisy = [random_dna(rng, rng.randint(1, 400), "ACGTTTAAN") for _ in range(60)]
    out = {
        "dnabert2": (BPETokenizer.from_file(DNABERT2), Tokenizer.from_file(str(DNABERT2))),
        "hf-ws-template-1000": pair(hf_trained(chunks, 1000, whitespace=True, template=True)),
        "hf-nopre-noprocessor-300": pair(hf_trained(noisy, 300, whitespace=False, template=False)),
        "hf-fuse-unk-200": pair(hf_trained(noisy, 200, whitespace=True, template=True, fuse_unk=True)),
        "hf-affixes-150": pair(hf_trained(["AC GT ACGT TTGA", "GATTACA CAT", "ACGTACGT GG"] * 5, 150,
                                          whitespace=True, template=False, continuing_subword_prefix="##",
                                          end_of_word_suffix="</w>")),
    }
    ours = BPETokenizer.train(chunks, vocab_size=600)
    out["omicskern-trained-600"] = (ours, Tokenizer.from_str(ours.to_json_str()))
    return out


VOCABS = ["dnabert2", "hf-ws-template-1000", "hf-nopre-noprocessor-300", "hf-fuse-unk-200", "hf-affixes-150",
          "omicskern-trained-600"]


# -- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("length", [0, 1, 17, 1000, 10_000], ids=lambda n: f"L{n}")
def test_random_dna_parity(vocabularies, name, length):
    tok, hf = vocabularies[name]
    rng = random.Random(length * 31 + len(name))
    seqs = [random_dna(rng, length) for _ in range(3)]
    seqs += [random_dna(rng, length, "ACGTN"), random_dna(rng, length, "AAAAAAC"),  # N, homopolymers
             random_dna(rng, length, "ACGTacgtn")]  # soft-masked (lower case -> HF's [UNK] rules)
    assert_parity(tok, hf, seqs)


@pytest.mark.parametrize("name", VOCABS)
def test_messy_text_parity(vocabularies, name):
    """Whitespace, punctuation, literal special tokens, non-ASCII, lower case: HF's exact pipeline."""
    tok, hf = vocabularies[name]
    rng = random.Random(3)
    pieces = ["ACGT", "acgt", "NNNN", " ", "\t", "\n", "  ", ".", ",;", "[MASK]", "[CLS]", "[SEP]", "[PAD]",
              "[UNK]", "[MASK", "MASK]", "[mask]", "é", "ß", "中文", "١٢", "\u00a0", "\u2003", "🧬", "e\u0301",
              "_", "-", "GATTACA", "##", "</w>", "ACGT-ACGT", "x"]
    seqs = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(200)]
    seqs += ["[MASK][MASK]", "A[MASK]C", "[[MASK]]", " [CLS] ", "[CLS]" * 3 + "ACGT"]
    assert_parity(tok, hf, seqs)


_DNABERT2_PAIR = (BPETokenizer.from_file(DNABERT2), Tokenizer.from_file(str(DNABERT2)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(list("ACGTNacgt [].,é中\t") + ["[MASK]", "[SEP]", "AAAAAAAA"]),
                         max_size=80).map("".join), min_size=1, max_size=6))
def test_hypothesis_parity_dnabert2(seqs):
    tok = _DNABERT2_PAIR[0]
    assert_parity(tok, _DNABERT2_PAIR[1], seqs, engines=("auto", "small_windows", "backtrack"))


@pytest.mark.parametrize("name", ["dnabert2", "hf-ws-template-1000", "omicskern-trained-600"])
def test_real_genome_parity(vocabularies, lambda_seq, name):
    """The 48.5 kbp lambda genome as one word (windowed long-word path) and as 1 kbp chunks."""
    tok, hf = vocabularies[name]
    chunks = [lambda_seq[i:i + 1000] for i in range(0, len(lambda_seq), 1000)]
    assert_parity(tok, hf, [lambda_seq] + chunks, engines=("auto", "bucket", "windows", "backtrack"))
    tok.algorithm = "small_windows"
    assert tok.encode(lambda_seq).tolist() == hf.encode(lambda_seq).ids


def test_long_homopolymers_cross_windows():
    """Seams inside long runs (where a window's boundary is not a true boundary) must fall back."""
    tok, hf = _DNABERT2_PAIR
    rng = random.Random(11)
    seqs = []
    for _ in range(4):
        parts = [rng.choice("ACGT") * rng.randint(1, 3000) if rng.random() < 0.4 else
                 random_dna(rng, rng.randint(1, 3000), "ACGTN") for _ in range(25)]
        seqs.append("".join(parts))
    assert_parity(tok, hf, seqs, engines=("auto", "small_windows", "backtrack"))
    # real-size windows: a homopolymer longer than a window forces redone windows
    long_run = random_dna(rng, 20_000) + "A" * 40_001 + random_dna(rng, 20_000) + "AT" * 15_000 + "C"
    assert_parity(tok, hf, [long_run], engines=("auto", "windows", "backtrack"))


def test_unicode_classes_match_hf():
    """Whitespace's \\w / \\s and WhitespaceSplit's whitespace on code points across Unicode."""
    rng = random.Random(5)
    cps = {0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x3000, 0xFEFF, 0x200B, 0x0301, 0x24B6, 0x2160, 0x1F9EC}
    cps |= {c for c in range(0x21, 0x300)}
    cps |= {rng.randrange(0x80, 0x110000) for _ in range(3000)}
    chars = [chr(c) for c in sorted(cps) if not 0xD800 <= c <= 0xDFFF and chr(c) != "a"]
    vocab = {"[UNK]": 0, "a": 1}
    merges = []
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("a" + ch, len(vocab))
        merges.append(["a", ch])
    for pre in ("Whitespace", "WhitespaceSplit"):
        doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
               "pre_tokenizer": {"type": pre}, "post_processor": None, "decoder": None,
               "model": {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": None,
                         "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                         "ignore_merges": False, "vocab": vocab, "merges": merges}}
        text = json.dumps(doc)
        tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
        # "a" + c: one word -> merged token; punctuation -> two tokens; whitespace -> "a" only
        assert_parity(tok, hf, ["a" + ch for ch in chars] + ["a" + ch + "a" + ch for ch in chars[::7]],
                      engines=("auto",))


# -- hand-made tables: non-monotone merges, byte fallback, no unk, lowercase, Bert processing ------
def _doc(vocab, merges, **over):
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": merges}}
    for k, v in over.items():
        if k.startswith("model_"):
            doc["model"][k[6:]] = v
        else:
            doc[k] = v
    return json.dumps(doc)


def test_non_monotone_table_uses_exact_heap():
    vocab = {"[UNK]": 0, "A": 1, "C": 2, "AA": 3, "AAA": 4, "CA": 5, "AC": 6, "AAC": 7, "CAA": 8}
    merges = [["AA", "A"], ["C", "A"], ["A", "A"], ["AA", "C"], ["A", "C"], ["CA", "A"]]  # AA consumed before made
    text = _doc(vocab, merges, model_unk_token="[UNK]")
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert not tok.monotone_merges
    rng = random.Random(2)
    assert_parity(tok, hf, [random_dna(rng, n, "AAAC") for n in (0, 1, 2, 3, 17, 100, 3000)])


def test_duplicate_merges_and_shared_results():
    """Two merges giving one token, and a pair listed twice (HF keeps the later rank)."""
    vocab = {"A": 0, "C": 1, "AA": 2, "AC": 3, "AAC": 4, "CC": 5}
    merges = [["A", "A"], ["A", "C"], ["AA", "C"], ["A", "AC"], ["C", "C"], ["A", "A"]]
    text = _doc(vocab, merges)
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    rng = random.Random(4)
    assert_parity(tok, hf, [random_dna(rng, n, "AAC") for n in (1, 2, 5, 17, 200, 2000)])


def test_byte_fallback_and_no_unk():
    vocab = {"A": 0, "C": 1, "AC": 2, "<0xC3>": 3, "<0xA9>": 4, "<0x4E>": 5}
    merges = [["A", "C"]]
    for unk in (None, "A"):
        for fb in (True, False):
            text = _doc(vocab, merges, model_byte_fallback=fb, model_unk_token=unk, model_fuse_unk=True)
            tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
            assert_parity(tok, hf, ["ACNé", "NNAC", "éé", "ACGT中AC", "", "GGGG"])


def test_lowercase_normalizer_and_normalized_added_tokens():
    # "TOK"'s file id (5) clashes with the model's "tok": HF ignores it and assigns 6
    vocab = {"[UNK]": 0, "a": 1, "c": 2, "ac": 3, "[X]": 4, "tok": 5}
    added = [{"id": 4, "content": "[X]", "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True},
             {"id": 5, "content": "TOK", "single_word": False, "lstrip": True, "rstrip": True,
              "normalized": True, "special": False}]
    text = _doc(vocab, [["a", "c"]], model_unk_token="[UNK]", normalizer={"type": "Lowercase"},
                pre_tokenizer={"type": "Whitespace"}, added_tokens=added)
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert_parity(tok, hf, ["ACAC", "ac [X] AC", "[x]AC", "a tok c", "ATOKC", " TOK  ", "tokTOK", "G"])
    with pytest.raises(InvalidSequenceError, match="Lowercase"):
        tok.encode("ACé")


def test_bert_processing_and_lstrip_rstrip():
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "A": 4, "C": 5, "AC": 6}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": t == "[MASK]", "rstrip": t == "[MASK]",
              "normalized": False, "special": True} for t, i in (("[CLS]", 1), ("[SEP]", 2), ("[MASK]", 3))]
    text = _doc(vocab, [["A", "C"]], model_unk_token="[UNK]", added_tokens=added,
                post_processor={"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]})
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert_parity(tok, hf, ["AC [MASK] AC", "AC\u3000[MASK]\u00a0 C", "[MASK]", "  [MASK]", "A C[SEP] [MASK]"])


# -- options and the common API ----------------------------------------------------------------------
def test_uppercase_opt_in_and_soft_mask():
    tok, hf = _DNABERT2_PAIR
    up = BPETokenizer.from_file(DNABERT2, uppercase=True)
    rng = random.Random(9)
    seqs = [random_dna(rng, n, "ACGTacgtN") for n in (1, 17, 1000, 5000)]
    batch = up.encode_batch(seqs, padding=False, return_soft_mask=True)
    for i, s in enumerate(seqs):
        enc = hf.encode(s.upper())
        assert batch[i].tolist() == enc.ids
        mask = batch.soft_mask[batch.cu_seqlens[i]:batch.cu_seqlens[i + 1]].tolist()
        assert mask == [any(c.islower() for c in s[a:b]) for a, b in enc.offsets]
    # without uppercase, lower case follows the file: [UNK] per HF
    assert tok.encode("acgt", add_special_tokens=False).tolist() == hf.encode("acgt", add_special_tokens=False).ids


def test_truncation_and_padding_match_hf():
    rng = random.Random(1)
    seqs = [random_dna(rng, n) for n in (5, 60, 300, 1)]
    tok = BPETokenizer.from_file(DNABERT2)
    hf = Tokenizer.from_file(str(DNABERT2))
    hf.enable_truncation(max_length=12)
    hf.enable_padding(pad_id=3, pad_token="[PAD]")
    want = hf.encode_batch(seqs)
    got = tok.encode_batch(seqs, truncation=True, max_length=12)
    assert got.input_ids.tolist() == [e.ids for e in want]
    assert got.attention_mask.astype(int).tolist() == [e.attention_mask for e in want]
    hf.enable_padding(pad_id=3, pad_token="[PAD]", direction="left", length=12)
    left = tok.encode_batch(seqs, truncation=True, max_length=12, padding="max_length", padding_side="left")
    assert left.input_ids.shape == (4, 12)
    assert left.input_ids.tolist() == [e.ids for e in hf.encode_batch(seqs)]
    ragged = tok.encode_batch(seqs, padding=False)
    assert ragged.cu_seqlens.dtype == np.int64 and ragged.input_ids.dtype == np.int32
    assert ragged.to_torch().cu_seqlens.tolist() == ragged.cu_seqlens.tolist()
    for i, s in enumerate(seqs):
        assert ragged[i].tolist() == Tokenizer.from_file(str(DNABERT2)).encode(s).ids


def test_threads_give_identical_results(lambda_seq):
    tok = _DNABERT2_PAIR[0]
    seqs = [lambda_seq[i:i + 3000] for i in range(0, len(lambda_seq), 3000)] + [lambda_seq]
    one = tok.encode_batch(seqs, padding=False, num_threads=1)
    many = tok.encode_batch(seqs, padding=False, num_threads=4)
    assert np.array_equal(one.input_ids, many.input_ids) and np.array_equal(one.cu_seqlens, many.cu_seqlens)


def test_decode_round_trip(lambda_seq):
    tok = _DNABERT2_PAIR[0]
    for s in (lambda_seq[:5000], "A", "ACGTTGCA" * 40):
        assert tok.decode(tok.encode(s)) == s
    ids = tok.encode("ACGTNACGT")
    assert tok.decode(ids) == "ACGTACGT"  # [UNK] (for N) and [CLS]/[SEP] are special: skipped
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS]ACGT[UNK]ACGT[SEP]"
    vocab = tok.get_vocab()
    assert tok.vocab_size == 4096 and vocab["[MASK]"] == 4 and tok.pad_token_id == 3


def test_save_load_round_trip(tmp_path, vocabularies):
    tok, hf = vocabularies["omicskern-trained-600"]
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    hf2 = Tokenizer.from_file(str(path))  # HF loads ours
    again = BPETokenizer.from_file(tmp_path)  # directory works too
    seqs = [random_dna(random.Random(0), 700), "ACGT [MASK] NN"]
    assert_parity(again, hf2, seqs, engines=("auto",))
    hf_path = tmp_path / "hf.json"
    vocabularies["hf-ws-template-1000"][1].save(str(hf_path))  # we load HF's
    assert_parity(BPETokenizer.from_file(hf_path), Tokenizer.from_file(str(hf_path)), seqs, engines=("auto",))


# -- bad input ------------------------------------------------------------------------------------
def test_bad_inputs_raise_clearly(tmp_path):
    tok = _DNABERT2_PAIR[0]
    with pytest.raises(TypeError):
        tok.encode(123)
    with pytest.raises(TypeError):
        tok.encode_batch("ACGT")
    with pytest.raises(TypeError, match="sequence 1"):
        tok.encode_batch(["ACGT", 5])
    with pytest.raises(InvalidSequenceError) as e:
        tok.encode_batch([b"ACGT", b"AC\xffGT"])
    assert e.value.index == 1 and e.value.position == 2
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5000])
    with pytest.raises(ValueError, match="invalid tokenizer.json"):
        BPETokenizer.from_json_str("{not json")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        BPETokenizer.from_json_str("[1, 2]")
    with pytest.raises(FileNotFoundError):
        BPETokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(TypeError):
        BPETokenizer.from_json_str(3)
    with pytest.raises(TypeError):
        BPETokenizer({"model": {}})
    base = json.loads(DNABERT2.read_text())
    cases = [
        (("model", "type"), "WordPiece", NotImplementedError, "model type"),
        (("model", "dropout"), 0.1, NotImplementedError, "dropout"),
        (("model", "ignore_merges"), True, NotImplementedError, "ignore_merges"),
        (("model", "unk_token"), "<unk>", ValueError, "unk_token"),
        (("pre_tokenizer",), {"type": "ByteLevel", "add_prefix_space": False}, NotImplementedError, "ByteLevel"),
        (("normalizer",), {"type": "NFKC"}, NotImplementedError, "NFKC"),
        (("post_processor",), {"type": "ByteLevel"}, NotImplementedError, "post_processor"),
        (("model", "merges"), [["A", "ZZZ"]], ValueError, "ZZZ"),
        (("model", "merges"), ["A C G"], ValueError, "merge 0"),
    ]
    for keys, value, exc, match in cases:
        doc = json.loads(json.dumps(base))
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        with pytest.raises(exc, match=match):
            BPETokenizer.from_json_str(json.dumps(doc))
    doc = json.loads(json.dumps(base))
    doc["added_tokens"][4]["single_word"] = True
    with pytest.raises(NotImplementedError, match="single_word"):
        BPETokenizer.from_json_str(json.dumps(doc))


def test_empty_and_all_n():
    tok, hf = _DNABERT2_PAIR
    assert_parity(tok, hf, ["", "N" * 5000, "n", " " * 10], engines=("auto", "heap"))
    assert tok.encode("", add_special_tokens=False).shape == (0,)


# -- vocabulary API ------------------------------------------------------------------------------
def test_vocabulary_api_matches_hf():
    tok, hf = BPETokenizer.from_file(DNABERT2), Tokenizer.from_file(str(DNABERT2))
    assert tok.vocab == tok.get_vocab() == hf.get_vocab() and tok.vocab_size == hf.get_vocab_size() == 4096
    for t in ["A", "ACGT", "[CLS]", "[UNK]", "acgt", "zz", "", "N", "ACGTACGTACGTACGTACGTACGTACGT"]:
        assert tok.token_to_id(t) == hf.token_to_id(t), t  # None for an unknown token, as HF
    for i in [0, 1, 5, 4095, 4096, 10**6]:
        assert tok.id_to_token(i) == hf.id_to_token(i), i  # None outside the vocabulary, as HF
    assert tok.id_to_token(-1) is None
    assert (tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id) == \
        tuple(hf.token_to_id(t) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    assert tok.bos_token_id is None and tok.eos_token_id is None
    assert BPETokenizer.from_file(DNABERT2, pad_token_id=4).pad_token_id == 4
    with pytest.raises(ValueError, match="not both"):
        BPETokenizer.from_file(DNABERT2, pad_token="[PAD]", pad_token_id=3)


def test_vocabulary_api_without_unk_and_with_holes():
    vocab = {"A": 0, "C": 1, "AC": 5}  # ids 2..4 unused
    text = _doc(vocab, [["A", "C"]], model_unk_token=None)
    tok, hf = BPETokenizer.from_json_str(text), Tokenizer.from_str(text)
    assert tok.unk_token_id is None and tok.cls_token_id is None and tok.vocab_size == 6
    for i in range(8):
        assert tok.id_to_token(i) == hf.id_to_token(i), i
    assert tok.token_to_id("G") is None and tok.token_to_id("AC") == 5


# -- mostly-[UNK] results warn (lower-case input and a vocabulary without lower case) -------------
def _one_warning(record) -> str:
    got = [w for w in record if issubclass(w.category, UnknownTokensWarning)]
    assert len(got) == 1, [str(w.message) for w in got]
    assert got[0].filename == __file__  # it points at the caller's line, whatever the call path
    return str(got[0].message)


def test_lowercase_genome_warns_and_keeps_hf_ids(lambda_seq):
    import re

    tok, hf = BPETokenizer.from_file(DNABERT2), Tokenizer.from_file(str(DNABERT2))
    soft = lambda_seq[:20_000].lower()  # a soft-masked stretch, as P. falciparum's whole genome
    with pytest.warns(UnknownTokensWarning) as rec:
        ids = tok.encode(soft)
    msg = _one_warning(rec)
    assert ids.tolist() == hf.encode(soft).ids  # the file's semantics: HF's [UNK]s, exactly
    n = len(ids) - 2
    assert msg == (f"100% of {n:,} tokens are [UNK]: this tokenizer.json has no lower-case tokens; pass "
                   f"uppercase=True (or upper-case the sequences) for soft-masked genomes")
    # every path: batch padded / ragged, __call__, truncation, a tokenizer from the JSON text
    chunks = [soft[i:i + 1000] for i in range(0, len(soft), 1000)]
    calls = [lambda: tok.encode_batch(chunks), lambda: tok.encode_batch(chunks, padding=False),
             lambda: tok(chunks, truncation=True, max_length=50),
             lambda: BPETokenizer.from_json_str(DNABERT2.read_text()).encode_batch(chunks, num_threads=2)]
    for call in calls:
        with pytest.warns(UnknownTokensWarning, match="pass uppercase=True") as rec:
            call()
        _one_warning(rec)
    # a fraction below 100% is written as measured (floored), with the token count
    mixed = soft[:9000] + lambda_seq[9000:10_000]
    with pytest.warns(UnknownTokensWarning) as rec:
        ids = tok.encode(mixed, add_special_tokens=False)
    pct, total = re.match(r"([\d.]+)% of ([\d,]+) tokens", _one_warning(rec)).groups()
    n_unk = int((ids == tok.unk_token_id).sum())
    assert int(total.replace(",", "")) == len(ids) and 50 < float(pct) < 100
    assert abs(float(pct) - 100 * n_unk / len(ids)) < 1e-4


def test_no_warning_when_unknowns_are_few(lambda_seq):
    import warnings

    tok = BPETokenizer.from_file(DNABERT2)
    soft = lambda_seq[:20_000].lower()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)
        up = BPETokenizer.from_file(DNABERT2, uppercase=True)
        assert up.encode(soft).tolist() == tok.encode(lambda_seq[:20_000].upper()).tolist()
        tok.encode_batch([lambda_seq[:20_000]])
        # 5% soft-masked bases: one [UNK] per lower-case base (no fuse_unk), still 1 token in 5
        tok.encode(lambda_seq[:9500] + soft[9500:10_000])
        assert tok.encode("A N", add_special_tokens=False).tolist() == [tok.token_to_id("A"), 0]  # exactly 50%
        tok.encode_batch([])
        tok.encode("")
    with pytest.warns(UnknownTokensWarning):
        tok.encode("A N N", add_special_tokens=False)


def test_unknown_characters_other_than_lower_case_warn_generically(lambda_seq):
    tok = BPETokenizer.from_file(DNABERT2)  # DNABERT-2 has no N token: an assembly gap is [UNK]s
    with pytest.warns(UnknownTokensWarning, match="100% of 9 tokens are \\[UNK\\]: most of the input has no token"):
        tok.encode("NNN NNN NNN", add_special_tokens=False)
    # a trained vocabulary (upper-cased corpus) on lower-case input: the lower-case hint again
    trained = BPETokenizer.train([lambda_seq[:5000]], vocab_size=64)
    with pytest.warns(UnknownTokensWarning, match="no lower-case tokens") as rec:
        trained.encode_batch([lambda_seq[:3000].lower()], padding=False)
    _one_warning(rec)
