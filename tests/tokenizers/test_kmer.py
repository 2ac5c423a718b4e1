"""KmerTokenizer (Nucleotide Transformer and DNABERT-1 rules) against pure-Python references."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omicskern.errors import InvalidSequenceError
from omicskern.tokenizers import KmerTokenizer

IDX = {"A": 0, "T": 1, "C": 2, "G": 3}


def code(kmer: str) -> int:
    c = 0
    for ch in kmer:
        c = c * 4 + IDX[ch]
    return c


def nt_ref(seq: str, k: int) -> list[int]:
    """Nucleotide Transformer: split at N, k-mers from each piece start, leftovers single, N alone."""
    single = 6 + 4 ** k
    out = []
    for piece in re.split("(N)", seq.upper()):
        if piece == "N":
            out.append(single + 4)
            continue
        full = len(piece) - len(piece) % k
        out += [6 + code(piece[i:i + k]) for i in range(0, full, k)]
        out += [single + IDX[c] for c in piece[full:]]
    return out


def overlap_ref(seq: str, k: int) -> list[int]:
    """DNABERT-1: every window of k bases; windows with N are [UNK] (1)."""
    s = seq.upper()
    return [1 if "N" in s[i:i + k] else 5 + code(s[i:i + k]) for i in range(len(s) - k + 1)]


def test_nt_vocabulary_order():
    tok = KmerTokenizer(6)
    vocab = tok.get_vocab()
    assert tok.vocab_size == len(vocab) == 4107
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])[:6]] == \
        ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    assert (vocab["AAAAAA"], vocab["AAAAAT"], vocab["ACGTAC"], vocab["GGGGGG"]) == (6, 7, 728, 4101)
    assert [vocab[c] for c in "ATCGN"] == [4102, 4103, 4104, 4105, 4106]
    assert (tok.pad_token_id, tok.mask_token_id, tok.cls_token_id) == (1, 2, 3)
    assert tok.encode("ACGTACGN").tolist() == [3, 728, 4105, 4106]


@pytest.mark.parametrize("k", [3, 4, 5, 7, 8])
def test_nt_vocabulary_other_k(k):
    tok = KmerTokenizer(k)
    assert tok.vocab_size == 6 + 4 ** k + 5
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    vocab = tok.get_vocab()
    assert [vocab[m] for m in kmers] == list(range(6, 6 + 4 ** k))
    assert [vocab[c] for c in "ATCGN"] == list(range(6 + 4 ** k, 6 + 4 ** k + 5))


def test_dnabert_vocabulary_order():
    """DNABERT-1's vocab.txt: [PAD] [UNK] [CLS] [SEP] [MASK] AAA AAT AAC AAG ATA ..."""
    tok = KmerTokenizer(3, mode="overlap")
    order = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert order[:10] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "AAA", "AAT", "AAC", "AAG", "ATA"]
    assert order[-1] == "GGG" and len(order) == 69
    assert KmerTokenizer(6, mode="overlap").vocab_size == 4101
    assert tok.encode("ACGTN").tolist() == [2, 5 + code("ACG"), 5 + code("CGT"), 1, 3]


def test_nt_fixture_exact(data_dir):
    """Token ids of the released NT tokenizer on real-length sequences (one with an N)."""
    ref = np.load(data_dir / "fixtures" / "nt_v2_tiny_inputs.npz")
    tok = KmerTokenizer(6)
    batch = tok(list(ref["dna"]), padding="max_length", max_length=ref["input_ids"].shape[1])
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids_unmasked"])
    np.testing.assert_array_equal(batch.attention_mask, ref["attention_mask"].astype(bool))
    tok._chunk = 37  # many cut points inside every sequence, around the N as well
    np.testing.assert_array_equal(tok(list(ref["dna"]), padding="max_length", max_length=600, num_threads=2).input_ids,
                                  ref["input_ids_unmasked"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.text(alphabet="ACGTNacgtn", max_size=80), max_size=5), k=st.integers(3, 8),
       chunk=st.sampled_from([1, 5, 8, 13, 1 << 18]), threads=st.sampled_from([1, 2]))
def test_nt_matches_reference(seqs, k, chunk, threads):
    tok = KmerTokenizer(k)
    tok._chunk = chunk
    b = tok.encode_batch(seqs, padding=False, add_special_tokens=False, num_threads=threads)
    assert [r.tolist() for r in b] == [nt_ref(s, k) for s in seqs]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.text(alphabet="ACGTNacgtn", max_size=80), max_size=5), k=st.integers(3, 8),
       chunk=st.sampled_from([1, 5, 8, 13, 1 << 18]), threads=st.sampled_from([1, 2]))
def test_overlap_matches_reference(seqs, k, chunk, threads):
    tok = KmerTokenizer(k, mode="overlap")
    tok._chunk = chunk
    b = tok.encode_batch(seqs, padding=False, add_special_tokens=False, num_threads=threads)
    assert [r.tolist() for r in b] == [overlap_ref(s, k) for s in seqs]


@settings(max_examples=30, deadline=None)
@given(seq=st.text(alphabet="ACGTNN", min_size=200, max_size=3000), k=st.integers(3, 8),
       chunk=st.sampled_from([8, 61, 250]))
def test_long_sequences_cut_into_tasks(seq, k, chunk):
    for mode, ref in (("nt", nt_ref), ("overlap", overlap_ref)):
        tok = KmerTokenizer(k, mode=mode, num_threads=2)  # sequences are cut only with > 1 thread
        tok._chunk = chunk
        assert tok.encode(seq, add_special_tokens=False).tolist() == ref(seq, k)


def test_soft_mask_any_lower_base():
    tok = KmerTokenizer(3)
    b = tok.encode_batch(["ACGtttACGAn"], padding=False, add_special_tokens=False, return_soft_mask=True)
    assert b.input_ids.tolist() == nt_ref("ACGTTTACGAN", 3)  # ACG TTT ACG A N
    assert b.soft_mask.tolist() == [False, True, False, False, True]
    o = KmerTokenizer(3, mode="overlap")
    b = o.encode_batch(["AAaAAA"], padding=False, add_special_tokens=False, return_soft_mask=True)
    assert b.soft_mask.tolist() == [True, True, True, False]


@pytest.mark.parametrize("mode", ["nt", "overlap"])
def test_invalid_bytes(mode):
    tok = KmerTokenizer(4, mode=mode)
    with pytest.raises(InvalidSequenceError) as e:
        tok.encode_batch(["ACGTACGT", "ACGTAR", "X"])
    assert (e.value.index, e.value.position, e.value.byte) == (1, 5, ord("R"))
    with pytest.raises(InvalidSequenceError) as e:
        tok.encode("AX")  # shorter than k: still checked
    assert e.value.position == 1
    with pytest.raises(InvalidSequenceError) as e:
        KmerTokenizer(4, mode=mode, uppercase=False).encode("ACGTa")
    assert e.value.position == 4


def test_nt_on_invalid_mappings():
    unk = KmerTokenizer(3, on_invalid="unk")
    # R ends the piece like N and becomes <unk> (0)
    assert unk.encode("ACGTRACGT", add_special_tokens=False).tolist() == \
        [6 + code("ACG"), 6 + 64 + IDX["T"], 0, 6 + code("ACG"), 6 + 64 + IDX["T"]]
    as_n = KmerTokenizer(3, on_invalid="n")
    assert as_n.encode("ACGTRACGT", add_special_tokens=False).tolist() == nt_ref("ACGTNACGT", 3)


def test_overlap_on_invalid_mappings():
    for policy in ("unk", "n"):
        tok = KmerTokenizer(3, mode="overlap", on_invalid=policy)
        assert tok.encode("ACGRAC", add_special_tokens=False).tolist() == overlap_ref("ACGNAC", 3)


def test_empty_short_and_all_n():
    nt = KmerTokenizer(6)
    assert nt.encode("").tolist() == [3]
    assert nt.encode("NNN", add_special_tokens=False).tolist() == [4106] * 3
    assert nt.encode("ACG", add_special_tokens=False).tolist() == [4102, 4104, 4105]
    ov = KmerTokenizer(6, mode="overlap")
    assert ov.encode("ACGTA").tolist() == [2, 3]  # shorter than k: no window
    assert ov.encode("N" * 10, add_special_tokens=False).tolist() == [1] * 5


@pytest.mark.parametrize("bad", [2, 9, 6.0, True, "6"])
def test_bad_k(bad):
    with pytest.raises(ValueError, match="k must"):
        KmerTokenizer(bad)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        KmerTokenizer(6, mode="dnabert")


@pytest.mark.parametrize("k", [3, 6, 8])
def test_decode_round_trip(k):
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGTN"), 301, p=[0.24, 0.24, 0.24, 0.24, 0.04]))
    nt = KmerTokenizer(k)
    assert nt.decode(nt.encode(seq)) == seq
    ov = KmerTokenizer(k, mode="overlap")
    rebuilt = ov.decode(ov.encode(seq))
    assert len(rebuilt) == len(seq)
    # a base is known unless every window covering it holds an N
    for j, (a, b) in enumerate(zip(seq, rebuilt)):
        covered = any("N" not in seq[i:i + k] for i in range(max(0, j - k + 1), min(j, len(seq) - k) + 1))
        assert b == (a if covered else "N"), j
    assert ov.decode(ov.encode("ACGTACGTAC"), skip_special_tokens=False) == "[CLS]ACGTACGTAC[SEP]"


def test_real_genome_window(data_dir):
    text = (data_dir / "lambda_phage.fa").read_text().splitlines()
    seq = "".join(line.strip() for line in text[1:])
    for mode, ref in (("nt", nt_ref), ("overlap", overlap_ref)):
        tok = KmerTokenizer(6, mode=mode)
        tok._chunk = 5003
        one = tok.encode_batch([seq], padding=False, add_special_tokens=False, num_threads=1).input_ids
        two = tok.encode_batch([seq], padding=False, add_special_tokens=False, num_threads=2).input_ids
        assert one.tolist() == ref(seq, 6)
        np.testing.assert_array_equal(one, two)


def soft_ref(seq: str, k: int, mode: str) -> list[bool]:
    """A token is soft-masked when any of its bases is lower case."""
    low = [c.islower() for c in seq]
    if mode == "overlap":
        return [any(low[i:i + k]) for i in range(len(seq) - k + 1)]
    out, i = [], 0
    for piece in re.split("(N)", seq.upper()):
        if piece == "N":
            out.append(low[i])
            i += 1
            continue
        full = len(piece) - len(piece) % k
        out += [any(low[i + j:i + j + k]) for j in range(0, full, k)]
        out += [low[i + j] for j in range(full, len(piece))]
        i += len(piece)
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.text(alphabet="ACGTNacgtn", max_size=120), k=st.integers(3, 8), mode=st.sampled_from(["nt", "overlap"]),
       chunk=st.sampled_from([8, 29, 1 << 18]))
def test_soft_mask_matches_reference(seq, k, mode, chunk):
    tok = KmerTokenizer(k, mode=mode)
    tok._chunk = chunk
    b = tok.encode_batch([seq], padding=False, add_special_tokens=False, return_soft_mask=True, num_threads=2)
    assert b.soft_mask.tolist() == soft_ref(seq, k, mode)


# -- vocabulary API and checkpoints' own vocab.txt ---------------------------------------------------
KMERS6 = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
#: NT v2 (the nt_v2_tiny fixture's README, = the released v2 vocab.txt): six specials first.
NT_V2_TOKENS = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"] + KMERS6 + list("ATCGN")
#: NT v1 (nucleotide_transformer/tokenizers.py of instadeepai/nucleotide-transformer: StandardTokenizer's
#: default ids = special_tokens_1 + k-mers + A T C G N + special_tokens_2, the layout of the v1 checkpoints,
#: whose embedding holds the first 4105 ids, hence config.json vocab_size 4105).
NT_V1_TOKENS = ["<unk>", "<pad>", "<mask>", "<cls>"] + KMERS6 + list("ATCGN") + ["<eos>", "<bos>"]


def write_vocab(path, tokens):
    path.write_text("\n".join(tokens) + "\n")
    return path


def test_vocabulary_api_and_unknown_tokens():
    nt, ov = KmerTokenizer(6), KmerTokenizer(4, mode="overlap")
    assert nt.vocab == nt.get_vocab() and nt.token_to_id("ACGTAC") == 728 and nt.id_to_token(728) == "ACGTAC"
    for tok in (nt, ov):
        assert tok.token_to_id("acgtac") is None and tok.token_to_id("NNNNNN") is None  # None, as HF
        assert tok.token_to_id("ACGTA") is None and tok.token_to_id("") is None
        assert tok.id_to_token(tok.vocab_size) is None and tok.id_to_token(-1) is None
    assert (nt.unk_token_id, nt.pad_token_id, nt.mask_token_id, nt.cls_token_id, nt.eos_token_id,
            nt.bos_token_id, nt.sep_token_id) == (0, 1, 2, 3, 4, 5, None)
    assert (ov.pad_token_id, ov.unk_token_id, ov.cls_token_id, ov.sep_token_id, ov.mask_token_id,
            ov.eos_token_id, ov.bos_token_id) == (0, 1, 2, 3, 4, None, None)
    assert ov.token_to_id("N") is None and ov.id_to_token(5) == "AAAA"
    # what an unknown base gives: <unk> / [UNK] (with on_invalid="unk"), the id unk_token_id
    assert KmerTokenizer(3, on_invalid="unk").encode("ACGXAC", add_special_tokens=False).tolist() == \
        [6 + code("ACG"), 0, 6 + 64 + 0, 6 + 64 + 2]
    assert KmerTokenizer(3, mode="overlap", on_invalid="unk").encode("ACGX", add_special_tokens=False).tolist() == \
        [5 + code("ACG"), 1]


def test_v2_vocab_file_reproduces_v2_ids(tmp_path, data_dir):
    tok = KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "vocab.txt", NT_V2_TOKENS))
    assert (tok.k, tok.mode, tok.vocab_size) == (6, "nt", 4107)
    assert tok.encode("ACGTACGN").tolist() == [3, 728, 4105, 4106]
    assert tok.get_vocab() == KmerTokenizer(6).get_vocab()
    ref = np.load(data_dir / "fixtures" / "nt_v2_tiny_inputs.npz")
    batch = tok(list(ref["dna"]), padding="max_length", max_length=ref["input_ids"].shape[1])
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids_unmasked"])
    assert KmerTokenizer.from_vocab_file(tmp_path).get_vocab() == tok.get_vocab()  # a checkpoint folder


@pytest.mark.parametrize("tokens", [NT_V1_TOKENS, NT_V1_TOKENS[:-2]], ids=["4107-lines", "4105-lines"])
def test_v1_vocab_file_gives_v1_ids(tmp_path, data_dir, tokens):
    """NT v1's own tokenizer gives ACGTACGN -> [3, 726, 4103, 4104]: k-mers from 4, not 6."""
    tok = KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "vocab.txt", tokens))
    assert (tok.k, tok.mode, tok.vocab_size) == (6, "nt", len(tokens))
    assert tok.encode("ACGTACGN").tolist() == [3, 726, 4103, 4104]
    assert (tok.unk_token_id, tok.pad_token_id, tok.mask_token_id, tok.cls_token_id) == (0, 1, 2, 3)
    assert (tok.eos_token_id, tok.bos_token_id) == ((4105, 4106) if len(tokens) == 4107 else (None, None))
    assert tok.token_to_id("AAAAAA") == 4 and tok.token_to_id("N") == 4104 and tok.id_to_token(len(tokens)) is None
    # same tokens as v2 on the fixture: every k-mer / base id is 2 lower, <cls> and <pad> are the same
    ref = np.load(data_dir / "fixtures" / "nt_v2_tiny_inputs.npz")
    v1 = tok(list(ref["dna"]), padding="max_length", max_length=600).input_ids
    v2 = ref["input_ids_unmasked"]
    np.testing.assert_array_equal(v1, np.where(v2 > 5, v2 - 2, v2))
    assert tok.decode(tok.encode("ACGTACGN")) == "ACGTACGN"
    # padding, truncation and the soft mask on the v1 ids
    b = tok.encode_batch(["ACGTACgn", "A"], return_soft_mask=True, truncation=True, max_length=3)
    assert b.input_ids.tolist() == [[3, 726, 4103], [3, 4100, 1]]
    assert b.soft_mask.tolist() == [[False, False, True], [False, False, False]]


def test_vocab_file_ids_are_looked_up_not_recomputed(tmp_path):
    """A vocabulary in any order: every id comes from the file (the encoder gathers through it)."""
    rng = np.random.default_rng(0)
    tokens = list(np.array(NT_V2_TOKENS, dtype=object)[rng.permutation(len(NT_V2_TOKENS))])
    tok = KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "vocab.txt", tokens))
    ref = KmerTokenizer(6)
    seqs = ["ACGTACGN", "acgtacgtacgtaNNAC", "", "G" * 13, "ATTTTTCCCGGGATN" * 30]
    for add in (True, False):
        got = tok.encode_batch(seqs, padding=False, add_special_tokens=add)
        want = ref.encode_batch(seqs, padding=False, add_special_tokens=add)
        assert [[tokens[i] for i in r] for r in got] == [[ref.id_to_token(int(i)) for i in r] for r in want]
        assert tok.decode_batch(got) == ref.decode_batch(want)
    assert tok.encode("ACGTACGN").tolist() == [tokens.index(t) for t in ("<cls>", "ACGTAC", "G", "N")]
    assert tok.pad_token_id == tokens.index("<pad>")
    assert tok.encode_batch(["A", "ACGTAC"], truncation=True, max_length=2).input_ids.tolist() == \
        [[tokens.index("<cls>"), tokens.index("A")], [tokens.index("<cls>"), tokens.index("ACGTAC")]]
    # overlap mode (DNABERT-1 vocab.txt), shuffled as well
    dnabert = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ["".join(p) for p in itertools.product("ATCG", repeat=3)]
    shuffled = list(np.array(dnabert, dtype=object)[rng.permutation(len(dnabert))])
    ov = KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "vocab.txt", shuffled))
    ov_ref = KmerTokenizer(3, mode="overlap")
    assert (ov.k, ov.mode) == (3, "overlap")
    for s in ("ACGTNACGT", "AC", "TTTTGCA"):
        got = [shuffled[i] for i in ov.encode(s)]
        assert got == [ov_ref.id_to_token(int(i)) for i in ov_ref.encode(s)]
        assert ov.decode(ov.encode(s)) == ov_ref.decode(ov_ref.encode(s))


def test_dnabert_vocab_file_and_round_trip(tmp_path):
    for k, mode in ((3, "overlap"), (6, "overlap"), (4, "nt")):
        tok = KmerTokenizer(k, mode=mode)
        path = tok.save_vocab_file(tmp_path)
        assert path == tmp_path / "vocab.txt"
        again = KmerTokenizer.from_vocab_file(path)
        assert (again.k, again.mode, again.get_vocab(), again.special_ids) == (k, mode, tok.get_vocab(),
                                                                                 tok.special_ids)
        assert again.encode("ACGTNACGTT").tolist() == tok.encode("ACGTNACGTT").tolist()
    # k and mode can be given; a wrong k is an error naming the file
    assert KmerTokenizer.from_vocab_file(path, k=4, mode="nt").k == 4
    with pytest.raises(ValueError, match="lacks .* 5-mers"):
        KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "v.txt", NT_V2_TOKENS), k=5)


@pytest.mark.parametrize("tokens,match", [
    (NT_V2_TOKENS[:-10], "lacks 5 of the 4096 6-mers"),
    (NT_V2_TOKENS + ["AAAAAAA"], "cannot infer k"),
    (["<unk>", "<pad>", "<cls>"], "cannot infer k"),
    (NT_V2_TOKENS + ["<pad>"], "appears twice"),
    ([t for t in NT_V2_TOKENS if t != "<pad>"], "no pad token"),
    (["[PAD]", "[CLS]", "[SEP]"] + KMERS6, "needs '\\[UNK\\]'"),
])
def test_bad_vocab_files(tmp_path, tokens, match):
    path = write_vocab(tmp_path / "vocab.txt", tokens)
    with pytest.raises(ValueError, match=match) as e:
        KmerTokenizer.from_vocab_file(path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError):
        KmerTokenizer.from_vocab_file(tmp_path / "missing")


def test_vocab_file_without_pad_needs_pad_token_id(tmp_path):
    tokens = [t for t in NT_V2_TOKENS if t != "<pad>"]
    tok = KmerTokenizer.from_vocab_file(write_vocab(tmp_path / "vocab.txt", tokens), pad_token_id=0)
    assert tok.pad_token_id == 0 and tok.encode_batch(["A", "ACGTACG"]).input_ids[0].tolist() == [2, 4101, 0]
