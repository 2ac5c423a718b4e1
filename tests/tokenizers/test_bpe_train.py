"""BPETokenizer.train: the C++ trainer against HF's BpeTrainer, and sanity of what it writes."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from omicskern.tokenizers.bpe import BPETokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def lambda_seq() -> str:
    return "".join(l.strip() for l in (DATA / "lambda_phage.fa").read_text().splitlines() if not l.startswith(">"))


def hf_train(corpus, vocab_size, *, whitespace=True, min_frequency=0) -> dict:
    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    if whitespace:
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       min_frequency=min_frequency, show_progress=False))
    return json.loads(hf.to_str())


def vocab_and_merges(doc: dict) -> tuple[list[str], list[tuple[str, str]]]:
    vocab = [t for t, _ in sorted(doc["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in doc["model"]["merges"]]
    return vocab, merges


@pytest.mark.parametrize("seed,vocab_size,alphabet", [
    pytest.param(0, 300, "ACGT", id="acgt-300"),
    pytest.param(1, 200, "ACGTTTTN", id="skewed-N-200"),
    pytest.param(2, 500, "AC GT", id="whitespace-500"),
    pytest.param(3, 120, "AAAAC", id="homopolymers-120"),
])
def test_same_merges_as_hf_bpe_trainer(seed, vocab_size, alphabet):
    rng = random.Random(seed)
    corpus = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(80)]
    corpus += corpus[:10]  # repeated words count twice
    ours = json.loads(BPETokenizer.train(corpus, vocab_size=vocab_size, uppercase_corpus=False).to_json_str())
    assert vocab_and_merges(ours) == vocab_and_merges(hf_train(corpus, vocab_size))


def test_same_merges_as_hf_on_real_genome_and_min_frequency():
    seq = lambda_seq()
    chunks = [seq[i:i + 5000] for i in range(0, len(seq), 5000)]
    ours = json.loads(BPETokenizer.train(chunks, vocab_size=800).to_json_str())
    assert vocab_and_merges(ours) == vocab_and_merges(hf_train(chunks, 800))
    ours = json.loads(BPETokenizer.train(chunks, vocab_size=5000, min_frequency=40).to_json_str())
    want = hf_train(chunks, 5000, min_frequency=40)
    assert vocab_and_merges(ours) == vocab_and_merges(want)
    assert len(ours["model"]["vocab"]) < 5000  # stopped by min_frequency


def test_trained_tokenizer_sanity(tmp_path):
    seq = lambda_seq()
    chunks = [seq[i:i + 2000] for i in range(0, len(seq), 2000)]
    tok = BPETokenizer.train(chunks, vocab_size=1024)
    doc = json.loads(tok.to_json_str())
    vocab = doc["model"]["vocab"]
    assert tok.vocab_size == len(vocab) == 1024
    assert [vocab[s] for s in SPECIALS] == [0, 1, 2, 3, 4]
    assert [vocab[c] for c in "ACGT"] == [5, 6, 7, 8]
    for a, b in doc["model"]["merges"]:  # every merge joins two known tokens into a later one
        assert vocab[a + b] > max(vocab[a], vocab[b])
    assert tok.monotone_merges
    # deterministic
    assert BPETokenizer.train(chunks, vocab_size=1024).to_json_str() == tok.to_json_str()
    # round trip of the training corpus, and HF agrees on the ids of the file we wrote
    hf = Tokenizer.from_str(tok.to_json_str())
    batch = tok.encode_batch(chunks, padding=False)
    assert tok.decode_batch(batch) == chunks
    assert [e.ids for e in hf.encode_batch(chunks)] == [b.tolist() for b in batch]
    # DNABERT-2-like template and special tokens
    assert tok.encode("ACGT")[0] == 1 and tok.encode("ACGT")[-1] == 2


def test_train_from_fasta_plain_and_gzip(tmp_path):
    seq = lambda_seq()
    fa = DATA / "lambda_phage.fa"
    gz = tmp_path / "lambda.fa.gz"
    with gzip.open(gz, "wt") as f:
        f.write(">one\n" + seq[:20000].lower() + "\n>two\n" + seq[20000:] + "\n")
    a = BPETokenizer.train([fa], vocab_size=300)
    b = BPETokenizer.train(str(gz), vocab_size=300)  # lower case is upper-cased by default
    assert a.get_vocab() != {} and a.vocab_size == 300
    # one record vs two records: a different corpus, both valid
    assert set(b.get_vocab()) >= set("ACGT")
    c = BPETokenizer.train([fa], vocab_size=300, chunk_length=1000)
    assert c.to_json_str() == BPETokenizer.train([seq[i:i + 1000] for i in range(0, len(seq), 1000)],
                                                 vocab_size=300).to_json_str()


def test_train_options():
    corpus = ["ACGTACGTTT", "GGGACGT"]
    tok = BPETokenizer.train(corpus, vocab_size=20, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
                             cls_token="<s>", sep_token="</s>", initial_alphabet="N", pre_tokenizer="none")
    vocab = tok.get_vocab()
    assert vocab["<unk>"] == 0 and "N" in vocab
    assert tok.encode("N").tolist() == [1, vocab["N"], 2]
    no_template = BPETokenizer.train(corpus, vocab_size=20, cls_token=None, sep_token=None)
    assert no_template.encode("A").tolist() == [no_template.get_vocab()["A"]]
    small = BPETokenizer.train(corpus, vocab_size=3)  # smaller than specials + alphabet: no merges
    assert json.loads(small.to_json_str())["model"]["merges"] == []


def test_train_bad_input():
    with pytest.raises(TypeError, match="single sequence"):
        BPETokenizer.train("ACGT")
    with pytest.raises(TypeError, match="item 1"):
        BPETokenizer.train(["ACGT", 3])
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["ACGT"], vocab_size=0)
    with pytest.raises(ValueError, match="unk_token"):
        BPETokenizer.train(["ACGT"], special_tokens=["[CLS]", "[SEP]"])
    with pytest.raises(ValueError, match="duplicates"):
        BPETokenizer.train(["ACGT"], special_tokens=["[UNK]", "[UNK]"])
    with pytest.raises(ValueError, match="pre_tokenizer"):
        BPETokenizer.train(["ACGT"], pre_tokenizer="bytelevel")
    with pytest.raises(FileNotFoundError):
        BPETokenizer.train([Path("/nonexistent/genome.fa")])


def test_train_from_fasta_bgzip_and_multi_line(tmp_path):
    """BGZF (bgzip) FASTA and wrapped lines give the same corpus as the plain file's records."""
    bgzf = pytest.importorskip("Bio.bgzf")
    seq = lambda_seq()
    text = ">one desc\n" + "\n".join(seq[i:min(i + 60, 20000)] for i in range(0, 20000, 60)) + "\n\n>empty\n>two\n" + seq[20000:] + "\n"
    plain = tmp_path / "lambda.fa"
    plain.write_text(text)
    bgz = tmp_path / "lambda.fa.gz"
    with bgzf.BgzfWriter(str(bgz), "wb") as f:
        f.write(text.encode())
    want = BPETokenizer.train([seq[:20000], seq[20000:]], vocab_size=300).to_json_str()
    assert BPETokenizer.train([plain], vocab_size=300).to_json_str() == want
    assert BPETokenizer.train(bgz, vocab_size=300).to_json_str() == want
    assert BPETokenizer.train([str(bgz)], vocab_size=300, chunk_length=700).to_json_str() == \
        BPETokenizer.train([s[i:i + 700] for s in (seq[:20000], seq[20000:]) for i in range(0, len(s), 700)],
                           vocab_size=300).to_json_str()


def test_fasta_records_stream(tmp_path):
    """omicskern.io.fasta.iter_records, the reader behind training on FASTA paths."""
    from omicskern.io.fasta import iter_records

    text = ">r1 some description\nACGT\n  acgn  \n\n>r2\n>r3\nTT\n"
    plain = tmp_path / "x.fa"
    plain.write_text(text)
    gz = tmp_path / "x.fa.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    want = [("r1", "ACGTacgn"), ("r2", ""), ("r3", "TT")]
    assert list(iter_records(plain)) == list(iter_records(gz)) == want
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n>r\nAC\n")
    with pytest.raises(ValueError, match="line 1"):
        list(iter_records(bad))
    with pytest.raises(FileNotFoundError):
        list(iter_records(tmp_path / "missing.fa"))
