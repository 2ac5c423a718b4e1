"""The common tokenizer API (omicskern.tokenizers.base) through the char and k-mer tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from omicskern.errors import InvalidSequenceError
from omicskern.tokenizers import CharTokenizer, KmerTokenizer, PaddedBatch, Batch, reverse_complement

SEQS = ["ACGTACGTAC", "A", "", "GGGNNNCCCTTTA", "acgtNacgt"]


def raw(tok, seqs):
    """Per-sequence ids without specials, the reference the batch layouts are checked against."""
    return [tok.encode(s, add_special_tokens=False).tolist() for s in seqs]


TOKENIZERS = [
    pytest.param(lambda: CharTokenizer(), id="char"),
    pytest.param(lambda: KmerTokenizer(3), id="nt-k3"),
    pytest.param(lambda: KmerTokenizer(4, mode="overlap"), id="overlap-k4"),
]


@pytest.mark.parametrize("make", TOKENIZERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_sides(make, side):
    tok = make()
    rows = [list(tok.prefix_ids) + r + list(tok.suffix_ids) for r in raw(tok, SEQS)]
    b = tok.encode_batch(SEQS, padding_side=side)
    assert isinstance(b, PaddedBatch)
    L = max(map(len, rows))
    assert b.input_ids.shape == (len(SEQS), L) and b.input_ids.dtype == np.int32
    assert b.attention_mask.dtype == bool
    for r, ids, m in zip(rows, b.input_ids, b.attention_mask):
        pad = [tok.pad_token_id] * (L - len(r))
        assert ids.tolist() == (r + pad if side == "right" else pad + r)
        assert m.tolist() == ([True] * len(r) + [False] * len(pad) if side == "right" else
                              [False] * len(pad) + [True] * len(r))
    assert b["input_ids"] is b.input_ids and b.keys() == ["input_ids", "attention_mask"]


def test_default_padding_sides():
    assert CharTokenizer().encode_batch(["A", "ACG"]).input_ids[0].tolist() == [4, 4, 0, 7, 1]  # HyenaDNA: left
    assert KmerTokenizer(3).encode_batch(["A", "ACGT"]).input_ids[0].tolist() == [3, 70, 1]  # NT: right, <pad>=1


@pytest.mark.parametrize("make", TOKENIZERS)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [2, 3, 7])
def test_truncation(make, side, max_length):
    tok = make()
    p, s = list(tok.prefix_ids), list(tok.suffix_ids)
    if max_length < len(p) + len(s):
        with pytest.raises(ValueError, match="max_length"):
            tok.encode_batch(SEQS, truncation=True, max_length=max_length)
        return
    budget = max_length - len(p) - len(s)
    b = tok.encode_batch(SEQS, truncation=True, max_length=max_length, truncation_side=side, padding=False)
    for r, got in zip(raw(tok, SEQS), b):
        kept = r[:budget] if side == "right" else r[len(r) - min(budget, len(r)):]
        assert got.tolist() == p + kept + s
    padded = tok.encode_batch(SEQS, truncation=True, max_length=max_length, padding="max_length")
    assert padded.input_ids.shape == (len(SEQS), max_length)


def test_padding_max_length_and_errors():
    tok = CharTokenizer(padding_side="right")
    b = tok.encode_batch(["ACG"], padding="max_length", max_length=8)
    assert b.input_ids.tolist() == [[0, 7, 8, 9, 1, 4, 4, 4]]
    with pytest.raises(ValueError, match="truncation"):
        tok.encode_batch(["ACGTACGT"], padding="max_length", max_length=4)
    with pytest.raises(ValueError, match="needs max_length"):
        tok.encode_batch(["A"], padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        tok.encode_batch(["A"], padding="longest_first")
    with pytest.raises(ValueError, match="padding_side"):
        tok.encode_batch(["A"], padding_side="middle")
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(["A"], max_length=-1)
    assert CharTokenizer(max_length=4).encode("ACGTACGT", truncation=True).tolist() == [0, 7, 8, 1]


@pytest.mark.parametrize("make", TOKENIZERS)
def test_ragged_cu_seqlens(make):
    tok = make()
    b = tok.encode_batch(SEQS, padding=False)
    assert isinstance(b, Batch) and len(b) == len(SEQS)
    assert b.input_ids.dtype == np.int32 and b.cu_seqlens.dtype == np.int64
    rows = [list(tok.prefix_ids) + r + list(tok.suffix_ids) for r in raw(tok, SEQS)]
    assert [r.tolist() for r in b] == rows
    import torch

    assert b.to_torch().cu_seqlens.dtype == torch.int32  # the varlen kernels' type
    assert b.cu_seqlens.tolist() == np.cumsum([0] + [len(r) for r in rows]).tolist()
    assert b.max_seqlen == max(map(len, rows))
    assert b[-1].tolist() == rows[-1]
    with pytest.raises(IndexError):
        b[len(SEQS)]
    padded = b.to_padded(tok.pad_token_id)
    np.testing.assert_array_equal(padded.input_ids, tok.encode_batch(SEQS, padding_side="right").input_ids)


def test_special_tokens_off():
    tok = CharTokenizer(add_special_tokens=False)
    assert tok.encode("AC").tolist() == [7, 8]
    assert tok.encode("AC", add_special_tokens=True).tolist() == [0, 7, 8, 1]
    assert KmerTokenizer(3).encode("ACG", add_special_tokens=False).tolist() == [6 + 0 * 16 + 2 * 4 + 3]


@pytest.mark.parametrize("make", TOKENIZERS)
def test_soft_mask_layouts(make):
    tok = make()
    seqs = ["ACGTacgtAC", "aaaaaaa", "ACGTACG"]
    ragged = tok.encode_batch(seqs, padding=False, return_soft_mask=True)
    assert ragged.soft_mask.dtype == bool and ragged.soft_mask.shape == ragged.input_ids.shape
    # specials are never soft-masked; the last row has no lower case
    for ids, m in zip(ragged, np.split(ragged.soft_mask, ragged.cu_seqlens[1:-1])):
        special = np.isin(ids, list(tok.prefix_ids + tok.suffix_ids))
        assert not m[special].any()
    assert not ragged.soft_mask[ragged.cu_seqlens[2]:].any()
    assert ragged.soft_mask[ragged.cu_seqlens[1]:ragged.cu_seqlens[2]].sum() > 0
    padded = tok.encode_batch(seqs, return_soft_mask=True)
    assert padded.soft_mask.shape == padded.input_ids.shape and padded.soft_mask.dtype == bool
    for row in range(len(seqs)):
        np.testing.assert_array_equal(padded.soft_mask[row][padded.attention_mask[row]], ragged.soft_mask[
            ragged.cu_seqlens[row]:ragged.cu_seqlens[row + 1]])
        assert not padded.soft_mask[row][~padded.attention_mask[row]].any()
    trunc = tok.encode_batch(seqs, return_soft_mask=True, truncation=True, max_length=4, padding=False)
    assert trunc.soft_mask.dtype == bool and trunc.soft_mask.shape == trunc.input_ids.shape
    np.testing.assert_array_equal(trunc.input_ids, tok.encode_batch(seqs, truncation=True, max_length=4, padding=False).input_ids)


def test_soft_mask_values_char():
    b = CharTokenizer().encode_batch(["Ac", "g"], padding=False, return_soft_mask=True)
    assert b.soft_mask.tolist() == [False, False, True, False, False, True, False]


def test_decode_and_decode_batch():
    tok = CharTokenizer()
    b = tok.encode_batch(["ACGT", "NA", ""])
    assert tok.decode_batch(b) == ["ACGT", "NA", ""]
    assert tok.decode_batch(tok.encode_batch(["ACGT", "NA"], padding=False)) == ["ACGT", "NA"]
    assert tok.decode([7, 8]) == "AC" and tok.decode(np.array([7, 8], np.int64)) == "AC"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([7, 99])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(b.input_ids)
    with pytest.raises(TypeError):
        tok.decode([7.0, 8.0])


def test_reverse_complement():
    assert reverse_complement("ACGTNacgtn") == "nacgtNACGT"
    assert reverse_complement(b"AACG") == b"CGTT"
    assert CharTokenizer.reverse_complement("RYKM") == "KMRY"
    tok = KmerTokenizer(3)
    seq = "ACGTTGCAAN"
    assert tok.decode(tok.encode(reverse_complement(seq))) == reverse_complement(seq)
    with pytest.raises(TypeError):
        reverse_complement(5)


@pytest.mark.parametrize("make", TOKENIZERS)
def test_zero_copy_to_torch(make):
    torch = pytest.importorskip("torch")
    tok = make()
    b = tok.encode_batch(SEQS, padding=False)
    for arr in (b.input_ids, b.cu_seqlens):
        t = torch.from_numpy(arr)
        assert t.data_ptr() == arr.ctypes.data
    p = tok.encode_batch(SEQS)
    t = torch.from_numpy(p.input_ids)
    assert t.data_ptr() == p.input_ids.ctypes.data and t.shape == p.input_ids.shape
    assert b.input_ids.flags.c_contiguous and b.input_ids.flags.owndata is False  # owned by the C++ buffer


@pytest.mark.parametrize("make", TOKENIZERS)
def test_threads_give_identical_results(make):
    rng = np.random.default_rng(7)
    seqs = ["".join(rng.choice(list("ACGTNacgt"), n)) for n in rng.integers(0, 3000, 40)]
    seqs.append("".join(rng.choice(list("ACGTN"), 1_200_003)))  # > 1 MB in all: really parallel
    tok = make()
    tok._chunk = 16384  # the long sequence is cut into ~70 tasks
    one = tok.encode_batch(seqs, padding=False, num_threads=1, return_soft_mask=True)
    for threads in (2, 0):
        other = tok.encode_batch(seqs, padding=False, num_threads=threads, return_soft_mask=True)
        np.testing.assert_array_equal(one.input_ids, other.input_ids)
        np.testing.assert_array_equal(one.cu_seqlens, other.cu_seqlens)
        np.testing.assert_array_equal(one.soft_mask, other.soft_mask)
    tok._chunk = 1 << 18
    np.testing.assert_array_equal(one.input_ids, tok.encode_batch(seqs, padding=False, num_threads=1).input_ids)


@pytest.mark.parametrize("make", TOKENIZERS)
def test_first_error_whatever_the_threads(make):
    seqs = ["ACGT" * 20000] * 20  # 1.6 MB: large enough to run on several threads
    seqs[7] = seqs[7][:9000] + "X" + seqs[7][9001:]
    seqs[12] = "X" + seqs[12][1:]
    tok = make()
    tok._chunk = 1000
    for threads in (1, 2):
        with pytest.raises(InvalidSequenceError) as e:
            tok.encode_batch(seqs, num_threads=threads)
        assert (e.value.index, e.value.position) == (7, 9000)


@pytest.mark.parametrize("make", TOKENIZERS)
@pytest.mark.parametrize("bad,err", [
    (None, TypeError), (123, TypeError), ("ACGT", TypeError), (["ACGT", 5], TypeError), ([["A", "C"]], TypeError),
    ([np.zeros((2, 2), np.uint8)], TypeError), ([np.zeros(4, np.int32)], TypeError),
], ids=["None", "int", "str-not-list", "int-item", "nested", "2d-array", "int32-array"])
def test_wrong_types(make, bad, err):
    tok = make()
    with pytest.raises(err):
        tok.encode_batch(bad)


def test_wrong_type_names_the_item():
    with pytest.raises(TypeError, match="sequence 1"):
        CharTokenizer().encode_batch(["ACGT", 5])
    with pytest.raises(TypeError, match="str or bytes"):
        CharTokenizer().encode(None)


@pytest.mark.parametrize("make", TOKENIZERS)
def test_input_kinds_agree(make):
    tok = make()
    s = "ACGTNACGTTGCA"
    ref = tok.encode(s).tolist()
    for x in (s.encode(), bytearray(s.encode()), memoryview(s.encode()), np.frombuffer(s.encode(), np.uint8)):
        assert tok.encode_batch([x], padding=False).input_ids.tolist() == ref
    assert tok.encode_batch((s, s), padding=False).input_ids.tolist() == ref * 2  # tuple
    assert tok.encode_batch(np.array([s, s]), padding=False).input_ids.tolist() == ref * 2
    assert tok.encode_batch(iter([s]), padding=False).input_ids.tolist() == ref  # any iterable


def test_empty_batch():
    for tok in (CharTokenizer(), KmerTokenizer(6)):
        r = tok.encode_batch([], padding=False)
        assert len(r) == 0 and r.input_ids.size == 0 and r.cu_seqlens.tolist() == [0] and r.max_seqlen == 0
        p = tok.encode_batch([])
        assert p.input_ids.shape == (0, 0)


def test_very_long_input():
    n = 30_000_003
    seq = b"ACGTN" * (n // 5) + b"ACG"
    tok = KmerTokenizer(6)
    ids = tok.encode(seq, add_special_tokens=False)
    # each ACGTN period: piece ACGT (4 leftovers) + N, joined across periods: ACGT N ACGT N ...
    assert ids.size == (n // 5) * 5 + 3
    assert ids[:5].tolist() == [4102, 4104, 4105, 4103, 4106]
    c = CharTokenizer().encode(seq, add_special_tokens=False)
    assert c.size == len(seq) and c[-3:].tolist() == [7, 8, 9]


# -- the shared vocabulary API (same names, same behaviour for unknown tokens and ids) -------------
DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "data"


def _bpe():
    from omicskern.tokenizers.bpe import BPETokenizer

    return BPETokenizer.from_file(DATA / "dnabert2_tokenizer.json")


ALL_TOKENIZERS = TOKENIZERS + [pytest.param(lambda: KmerTokenizer(6), id="nt-k6"), pytest.param(_bpe, id="bpe")]
COMMON_ARGS = ("max_length", "pad_token_id", "padding_side", "truncation_side", "add_special_tokens", "num_threads")
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")


@pytest.mark.parametrize("make", ALL_TOKENIZERS)
def test_vocabulary_api(make):
    tok = make()
    vocab = tok.vocab
    assert isinstance(vocab, dict) and vocab == tok.get_vocab() and vocab
    vocab["not a token"] = 0  # a copy: the tokenizer is not changed
    assert "not a token" not in tok.vocab and tok.token_to_id("not a token") is None
    vocab = tok.get_vocab()
    assert tok.vocab_size == max(vocab.values()) + 1
    for t, i in vocab.items():
        assert tok.token_to_id(t) == i and tok.id_to_token(i) == t
    assert tok.id_to_token(np.int64(next(iter(vocab.values())))) == next(iter(vocab))
    # unknown: None, as Hugging Face tokenizers (never an exception, never the unk id)
    for unknown in ("", "X", "acgtac" if "ACGTAC" in vocab else "zz", "<nope>", "ACGTACGTACGTACGTACGTACGTACGTACGT"):
        assert tok.token_to_id(unknown) is None
    for bad_id in (tok.vocab_size, tok.vocab_size + 10**6, -1):
        assert tok.id_to_token(bad_id) is None
    with pytest.raises(TypeError):
        tok.token_to_id(5)
    with pytest.raises(TypeError):
        tok.id_to_token("A")
    for role in ROLES:  # every role attribute exists: an id of the vocabulary or None
        i = getattr(tok, f"{role}_token_id")
        assert i is None or (isinstance(i, int) and 0 <= i < tok.vocab_size and tok.id_to_token(i) is not None), role
    assert tok.pad_token_id is not None and tok.unk_token_id is not None


@pytest.mark.parametrize("make", ALL_TOKENIZERS)
def test_special_token_roles_by_name(make):
    tok = make()
    names = {"char": "[{}]", "nt": "<{}>", "overlap": "[{}]", "bpe": "[{}]"}
    kind = type(tok).__name__
    style = "bpe" if kind == "BPETokenizer" else "char" if kind == "CharTokenizer" else tok.mode
    for role in ("pad", "unk", "cls", "mask"):
        assert tok.id_to_token(getattr(tok, f"{role}_token_id")) == names[style].format(role.upper() if
                                                                                        style != "nt" else role)
    if style == "nt":
        assert tok.sep_token_id is None and (tok.eos_token_id, tok.bos_token_id) == (4, 5)
    else:
        assert tok.id_to_token(tok.sep_token_id) == "[SEP]"


def test_common_constructor_arguments():
    import inspect

    from omicskern.tokenizers.bpe import BPETokenizer

    for cls in (CharTokenizer, KmerTokenizer):
        params = inspect.signature(cls).parameters
        assert all(p in params and params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in COMMON_ARGS), cls
    kw = dict(max_length=5, pad_token_id=9, padding_side="left", truncation_side="left", add_special_tokens=False,
              num_threads=1)
    for tok in (CharTokenizer(**kw), KmerTokenizer(3, **kw), BPETokenizer.from_file(DATA / "dnabert2_tokenizer.json",
                                                                                     **kw)):
        assert (tok.max_length, tok.pad_token_id, tok.padding_side, tok.truncation_side, tok.add_special_tokens,
                tok.num_threads) == (5, 9, "left", "left", False, 1)
        b = tok.encode_batch(["A", "ACGTACGTACGTACGTACGTACGT"], truncation=True)
        assert b.input_ids.shape[1] <= 5 and b.input_ids[0, 0] == 9  # left padding with id 9
    with pytest.raises(ValueError, match="pad_token_id"):
        CharTokenizer(pad_token_id=12)
    with pytest.raises(TypeError, match="pad_token_id"):
        KmerTokenizer(pad_token_id="<pad>")
    with pytest.raises(ValueError, match="max_length"):
        KmerTokenizer(max_length=-1)
