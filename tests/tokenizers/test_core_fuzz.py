"""Fuzz the C++ encoders and ragged post-processing with arbitrary input (the sanitizer CI step's
loop: .ci/sanitize runs it seeded, under ASan/UBSan, with more examples).

Whatever the bytes, lengths and options, the core returns a consistent batch or raises one of the
documented errors; it never reads out of bounds (which only the sanitizer build can see).
``OMICSKERN_FUZZ_EXAMPLES`` sets the number of examples per test (default 40).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omicskern.errors import InvalidSequenceError
from omicskern.tokenizers import BPETokenizer, CharTokenizer, KmerTokenizer

DNABERT2 = Path(__file__).resolve().parents[1] / "data" / "dnabert2_tokenizer.json"
EXAMPLES = int(os.environ.get("OMICSKERN_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

_TOKS = {
    "char": lambda: CharTokenizer(),
    "char_unk": lambda: CharTokenizer(on_invalid="unk"),
    "kmer_nt": lambda: KmerTokenizer(6, on_invalid="unk"),
    "kmer_overlap": lambda: KmerTokenizer(4, mode="overlap"),
    "bpe": lambda: BPETokenizer.from_file(DNABERT2),
}
_CACHE: dict = {}


def _tok(name):
    if name not in _CACHE:
        _CACHE[name] = _TOKS[name]()
    return _CACHE[name]


dna = st.text(alphabet="ACGTNacgtn", max_size=300)
anything = st.one_of(
    dna,
    st.text(max_size=60),
    st.binary(max_size=80),
    dna.map(lambda s: bytearray(s.encode())),
    dna.map(lambda s: np.frombuffer(s.encode(), dtype=np.uint8).copy()),
    st.builds(lambda a, b, n: a * n + b, dna, dna, st.integers(0, 400)),  # long repeats: chunked paths
)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(_TOKS))
@FUZZ
@given(seqs=st.lists(anything, max_size=6), max_length=st.one_of(st.none(), st.integers(0, 64)),
       truncation=st.booleans(), padding=st.sampled_from([False, "longest", "max_length"]),
       side=st.sampled_from(["left", "right"]), threads=st.sampled_from([1, 2]), soft=st.booleans())
def test_fuzz_encode_batch(name, seqs, max_length, truncation, padding, side, threads, soft):
    tok = _tok(name)
    if padding == "max_length" and max_length is None:
        max_length = 16
    try:
        out = tok.encode_batch(seqs, padding=padding, max_length=max_length, truncation=truncation,
                               padding_side=side, truncation_side=side, num_threads=threads,
                               return_soft_mask=soft)
    except (InvalidSequenceError, ValueError, UnicodeError):
        return
    ids = np.asarray(out.input_ids)
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tok.vocab_size)
    if padding is False:
        cu = np.asarray(out.cu_seqlens)
        assert cu[0] == 0 and cu[-1] == ids.size and (np.diff(cu) >= 0).all() and cu.size == len(seqs) + 1
    else:
        assert ids.shape[0] == len(seqs)
        assert np.asarray(out.attention_mask).shape == ids.shape


@FUZZ
@given(lengths=st.lists(st.integers(0, 40), max_size=8), prefix=st.lists(st.integers(0, 9), max_size=3),
       suffix=st.lists(st.integers(0, 9), max_size=3), limit=st.integers(-1, 50), keep_end=st.booleans(),
       length=st.integers(-1, 60), left=st.booleans(), threads=st.sampled_from([1, 2]))
def test_fuzz_ragged_core(lengths, prefix, suffix, limit, keep_end, length, left, threads):
    from omicskern._native import load_C

    C = load_C()
    off = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    ids = np.arange(off[-1], dtype=np.int32)
    try:
        new_ids, new_off = C.ragged_finalize(ids, off, prefix, suffix, limit, keep_end, threads)
    except ValueError:
        assert 0 <= limit < len(prefix) + len(suffix)
        return
    assert new_off[-1] == new_ids.size
    try:
        out, mask = C.ragged_pad(new_ids, new_off, np.int32(-1), length, left, threads)
    except ValueError:
        assert length >= 0 and np.diff(new_off).max(initial=0) > length
        return
    assert mask.sum() == new_ids.size
    assert (out[mask] >= 0).all() and (out[~mask] == -1).all()
