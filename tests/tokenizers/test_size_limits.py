"""Sizes from the caller or from a file are validated before the C++ core allocates anything.

* ``padding="max_length"`` with an absurd ``max_length`` (2**62): pybind11 computed the strides
  of the ``[n, max_length]`` array with a signed multiplication that overflowed (UBSan: signed
  integer overflow in ``c_strides``). Now ``ragged_pad`` checks ``n * length`` first and raises a
  ValueError naming max_length and the size.
* ``max_length`` beyond int64 fell through pybind11's overload resolution (a TypeError dumping
  the signatures); truncating to it is "no limit", padding to it is a ValueError.
* One token id of 4e7 in a tokenizer.json made the dense per-id tables cost 3.4 GB (bad_alloc for
  2e8, an empty MemoryError for 1e12); ids far beyond the vocabulary size are now rejected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omicskern._native import load_C
from omicskern.tokenizers import BPETokenizer, CharTokenizer, KmerTokenizer

DNABERT2 = Path(__file__).resolve().parents[1] / "data" / "dnabert2_tokenizer.json"


def _tokenizers():
    return [CharTokenizer(), KmerTokenizer(3), KmerTokenizer(3, mode="overlap"), BPETokenizer.from_file(DNABERT2)]


@pytest.mark.parametrize("max_length", [2**62, 2**61 + 1, 2**63 - 1, 2**63, 2**64, np.int64(2**62)])
def test_padding_to_an_absurd_max_length_is_a_value_error(max_length):
    for tok in _tokenizers():
        with pytest.raises(ValueError, match=r"max_length\) %d is too large" % int(max_length)):
            tok.encode_batch(["ACGT"] * 4, padding="max_length", max_length=max_length)


def test_truncating_to_a_huge_max_length_is_no_limit():
    for tok in _tokenizers():
        ref = tok.encode_batch(["ACGTACGT"] * 3, padding=False)
        for ml in (2**62, 2**63 - 1, 2**63, 2**70):
            got = tok.encode_batch(["ACGTACGT"] * 3, padding=False, truncation=True, max_length=ml)
            np.testing.assert_array_equal(got.input_ids, ref.input_ids)
            np.testing.assert_array_equal(got.cu_seqlens, ref.cu_seqlens)


def test_ragged_core_size_checks():
    C = load_C()
    ids = np.arange(8, dtype=np.int32)
    off = np.array([0, 4, 8], dtype=np.int64)
    with pytest.raises(ValueError, match=r"2 sequences x 4611686018427387904"):
        C.ragged_pad(ids, off, np.int32(0), 2**62, False, 1)
    with pytest.raises(ValueError, match="too large"):
        C.ragged_pad(ids.astype(np.uint8), off, np.uint8(0), 2**62, False, 1)
    # the largest length that still fits passes the check (numpy then refuses the allocation itself)
    with pytest.raises(MemoryError):
        C.ragged_pad(ids, off, np.int32(0), (2**63 - 1) // 5 // 2, False, 1)
    out, mask = C.ragged_pad(ids, off, np.int32(-1), np.int64(6), True, 1)
    assert out.tolist() == [[-1, -1, 0, 1, 2, 3], [-1, -1, 4, 5, 6, 7]]
    assert mask.sum() == 8
    new_ids, new_off = C.ragged_finalize(ids, off, [100], [101], 2**64, False, 1)
    assert new_off.tolist() == [0, 6, 12]
    new_ids, new_off = C.ragged_finalize(ids, off, [100], [101], np.int64(4), True, 1)
    assert new_ids.tolist() == [100, 2, 3, 101, 100, 6, 7, 101]
    with pytest.raises(TypeError, match="max_length must be an int, got float"):
        C.ragged_finalize(ids, off, [], [], 2.5, False, 1)
    with pytest.raises(TypeError, match="length must be an int, got str"):
        C.ragged_pad(ids, off, np.int32(0), "10", False, 1)


def _with_id(tmp_path, new_id: int, token: str | None = None) -> Path:
    data = json.loads(DNABERT2.read_text())
    vocab = data["model"]["vocab"]
    token = token or max(vocab, key=vocab.get)
    vocab[token] = new_id
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("new_id", [17408, 40_000_000, 200_000_000, 10**12])
def test_token_id_far_beyond_the_vocabulary_is_rejected(tmp_path, new_id):
    path = _with_id(tmp_path, new_id)
    token = max(json.loads(DNABERT2.read_text())["model"]["vocab"].items(), key=lambda kv: kv[1])[0]
    with pytest.raises(ValueError, match=rf"token '{token}' has id {new_id}, far beyond the vocabulary's 4096 tokens"):
        BPETokenizer.from_file(path)


def test_a_few_holes_in_the_ids_still_load(tmp_path):
    """4 * 4096 + 1024 - 1 = 17407 is the largest id accepted for DNABERT-2's 4096 tokens."""
    tok = BPETokenizer.from_file(_with_id(tmp_path, 17407))
    assert tok.vocab_size == 17408
    ref = BPETokenizer.from_file(DNABERT2)
    seqs = ["ACGTTGCAACGGTCATCGAT" * 20, "TTTTGGGGCCCCAAAA"]
    a, b = tok.encode_batch(seqs, padding=False), ref.encode_batch(seqs, padding=False)
    moved = ref.get_vocab()[max(ref.get_vocab(), key=ref.get_vocab().get)]
    np.testing.assert_array_equal(np.where(b.input_ids == moved, 17407, b.input_ids), a.input_ids)
