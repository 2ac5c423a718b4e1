"""CharTokenizer against a pure-Python reference, HyenaDNA's ids and real genomes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omicskern.errors import InvalidSequenceError
from omicskern.tokenizers import CharTokenizer

HYENA_SPECIALS = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]


def char_ref(seq: str, chars: str = "ACGTN", uppercase: bool = True, on_invalid: str = "error") -> list[int]:
    """HyenaDNA's rule: specials 0..6, character i -> 7 + i; [UNK] (6) or N or an error otherwise.

    Input is read as UTF-8 bytes: a mapped non-ASCII character gives one token per byte.
    """
    vocab = {c: 7 + i for i, c in enumerate(chars)}
    out = []
    for pos, c in enumerate(seq):
        key = c.upper() if uppercase and c.upper() in vocab and c not in vocab else c
        if key in vocab:
            out.append(vocab[key])
        elif on_invalid == "unk":
            out += [6] * len(c.encode())
        elif on_invalid == "n":
            out += [vocab["N"]] * len(c.encode())
        else:
            raise InvalidSequenceError(f"position {pos}", position=pos)
    return out


def test_default_vocabulary_is_hyenadna():
    tok = CharTokenizer()
    vocab = tok.get_vocab()
    assert vocab == {**{t: i for i, t in enumerate(HYENA_SPECIALS)}, "A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    assert tok.vocab_size == 12
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 1, 4, 6)
    assert tok.encode("ACGTN").tolist() == [0, 7, 8, 9, 10, 11, 1]
    assert tok.encode("ACGTN", add_special_tokens=False).tolist() == [7, 8, 9, 10, 11]


def test_hyenadna_fixture_exact(data_dir):
    """HyenaDNA's CharacterTokenizer output: [CLS] bases [SEP], left-padded with [PAD]=4."""
    ref = np.load(data_dir / "fixtures" / "hyenadna_tiny_inputs.npz")
    batch = CharTokenizer()(list(ref["sequences"]))
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, ref["attention_mask"].astype(bool))
    assert batch.attention_mask.sum(1).tolist() == ref["lengths"].tolist()


@pytest.mark.parametrize("chars", ["dna", "rna", "iupac", "ACGT", "XYZ-"], ids=lambda c: c)
def test_alphabets(chars):
    tok = CharTokenizer(chars)
    letters = tok.characters
    assert tok.get_vocab() == {**{t: i for i, t in enumerate(HYENA_SPECIALS)}, **{c: 7 + i for i, c in enumerate(letters)}}
    seq = letters * 3
    assert tok.encode(seq, add_special_tokens=False).tolist() == char_ref(seq, letters)


def test_rna_and_iupac_keep_hyena_ids():
    assert CharTokenizer("rna").encode("ACGUN", add_special_tokens=False).tolist() == [7, 8, 9, 10, 11]
    iupac = CharTokenizer("iupac")
    assert iupac.encode("ACGTNRY", add_special_tokens=False).tolist() == [7, 8, 9, 10, 11, 12, 13]
    with pytest.raises(InvalidSequenceError):
        CharTokenizer("rna").encode("ACGT")


@pytest.mark.parametrize("bad", [["A", "A"], [], ["AC"], ["é"], [" "]], ids=["dup", "empty", "multi", "nonascii", "space"])
def test_bad_alphabet(bad):
    with pytest.raises(ValueError):
        CharTokenizer(bad)


def test_on_invalid_n_needs_n():
    with pytest.raises(ValueError, match="N"):
        CharTokenizer("ACGT", on_invalid="n")
    with pytest.raises(ValueError, match="on_invalid"):
        CharTokenizer(on_invalid="skip")


def test_lowercase_soft_mask():
    tok = CharTokenizer()
    b = tok.encode_batch(["ACgtn", "aC"], padding=False, return_soft_mask=True)
    assert b.input_ids.tolist() == [0, 7, 8, 9, 10, 11, 1, 0, 7, 8, 1]
    assert b.soft_mask.tolist() == [False, False, False, True, True, True, False, False, True, False, False]
    assert b.soft_mask.dtype == bool
    strict = CharTokenizer(uppercase=False)
    with pytest.raises(InvalidSequenceError) as e:
        strict.encode_batch(["ACGT", "ACgt"])
    assert (e.value.index, e.value.position, e.value.byte) == (1, 2, ord("g"))
    assert CharTokenizer("ACGTNacgtn", uppercase=False).encode("Aa", add_special_tokens=False).tolist() == [7, 12]


def test_invalid_error_names_sequence_and_position():
    tok = CharTokenizer()
    with pytest.raises(InvalidSequenceError) as e:
        tok.encode_batch(["ACGT", "ACGTACGX", "XX"])
    assert (e.value.index, e.value.position, e.value.byte) == (1, 7, ord("X"))
    assert "sequence 1, position 7" in str(e.value) and "'X'" in str(e.value)


@pytest.mark.parametrize("seq,pos,char", [("ACGTé", 4, "é"), ("NNNé", 3, "é"), ("AC€", 2, "€")],
                         ids=["latin1", "after-n", "3-byte"])
def test_non_ascii_positions_are_characters(seq, pos, char):
    with pytest.raises(InvalidSequenceError) as e:
        CharTokenizer().encode(seq)
    assert e.value.position == pos
    assert seq[e.value.position] == char
    assert "position %d" % pos in str(e.value)


def test_non_ascii_bytes():
    with pytest.raises(InvalidSequenceError) as e:
        CharTokenizer().encode(b"AC\xe2\x80GT")
    assert (e.value.position, e.value.byte) == (2, 0xE2)
    assert "non-ASCII" in str(e.value)


@pytest.mark.parametrize("policy,expected", [("unk", [7, 6, 8, 6]), ("n", [7, 11, 8, 11])])
def test_on_invalid_mapping(policy, expected):
    tok = CharTokenizer(on_invalid=policy)
    assert tok.encode("AXC\x00", add_special_tokens=False).tolist() == expected
    assert tok.encode("AéC", add_special_tokens=False).tolist() == [7, expected[1], expected[1], 8]  # 2 UTF-8 bytes


def test_empty_and_all_n():
    tok = CharTokenizer()
    assert tok.encode("").tolist() == [0, 1]
    assert tok.encode("", add_special_tokens=False).tolist() == []
    assert tok.encode("N" * 1001, add_special_tokens=False).tolist() == [11] * 1001


def test_decode_round_trip():
    tok = CharTokenizer()
    assert tok.decode(tok.encode("ACGTNacgt")) == "ACGTNACGT"
    assert tok.decode(tok.encode("ACG"), skip_special_tokens=False) == "[CLS]ACG[SEP]"
    assert CharTokenizer(on_invalid="unk").decode([7, 6, 8]) == "ANC"  # [UNK] = one unknown base


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.text(alphabet="ACGTNacgtnXé", max_size=60), max_size=6),
       policy=st.sampled_from(["error", "unk", "n"]), chunk=st.sampled_from([1, 3, 7, 1 << 18]),
       threads=st.sampled_from([1, 2]))
def test_matches_reference(seqs, policy, chunk, threads):
    tok = CharTokenizer(on_invalid=policy)
    tok._chunk = chunk  # tiny chunks cut long sequences into many tasks
    expected = []
    first_error = None
    for i, s in enumerate(seqs):
        try:
            expected.append(char_ref(s, on_invalid=policy))
        except InvalidSequenceError as e:
            first_error = first_error or (i, e.position)
    if first_error:
        with pytest.raises(InvalidSequenceError) as e:
            tok.encode_batch(seqs, padding=False, num_threads=threads)
        assert (e.value.index, e.value.position) == first_error
        return
    b = tok.encode_batch(seqs, padding=False, add_special_tokens=False, num_threads=threads)
    assert [r.tolist() for r in b] == expected
    assert b.cu_seqlens.tolist() == np.cumsum([0] + [len(s.encode()) for s in seqs]).tolist()


def test_lambda_genome(data_dir):
    text = (data_dir / "lambda_phage.fa").read_text().splitlines()
    seq = "".join(line.strip() for line in text[1:])
    assert len(seq) == 48502
    tok = CharTokenizer()
    lut = np.full(256, -1)
    for c, i in tok.get_vocab().items():
        if len(c) == 1:
            lut[ord(c)] = i
    ref = lut[np.frombuffer(seq.encode(), np.uint8)]
    tok._chunk = 4099  # several tasks on one sequence
    for threads in (1, 2):
        ids = tok.encode(seq, add_special_tokens=False) if threads == 1 else \
            tok.encode_batch([seq], padding=False, add_special_tokens=False, num_threads=2).input_ids
        np.testing.assert_array_equal(ids, ref)
    assert tok.decode(tok.encode(seq)) == seq


def test_vocabulary_api_and_unknown_tokens():
    """token_to_id / id_to_token as HF: None for an unknown token or an id outside the vocabulary."""
    tok = CharTokenizer()
    assert tok.vocab == tok.get_vocab() and tok.vocab_size == 12
    assert [tok.token_to_id(c) for c in "ACGTN"] == [7, 8, 9, 10, 11]
    assert tok.token_to_id("[UNK]") == tok.unk_token_id == 6
    assert tok.token_to_id("a") is None  # lower case is read as upper case, but it is not a token
    assert tok.token_to_id("X") is None and tok.token_to_id("AC") is None
    assert [tok.id_to_token(i) for i in (0, 4, 6, 11)] == ["[CLS]", "[PAD]", "[UNK]", "N"]
    assert tok.id_to_token(12) is None and tok.id_to_token(-1) is None
    # HyenaDNA's CharacterTokenizer: bos [BOS] (never added), eos = sep = [SEP]
    assert (tok.mask_token_id, tok.bos_token_id, tok.eos_token_id, tok.sep_token_id) == (3, 2, 1, 1)
    iupac = CharTokenizer("iupac")
    assert iupac.token_to_id("R") == 12 and iupac.id_to_token(21) == "V" and iupac.id_to_token(22) is None
    # an unknown base is [UNK] only with on_invalid="unk"; its id is unk_token_id
    assert CharTokenizer(on_invalid="unk").encode("AXC", add_special_tokens=False).tolist() == [7, 6, 8]
    assert CharTokenizer(pad_token_id=5).encode_batch(["A", "ACG"]).input_ids[0].tolist() == [5, 5, 0, 7, 1]
