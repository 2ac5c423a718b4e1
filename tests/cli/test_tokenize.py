"""``omicskern tokenize``: outputs, resume, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from omicskern.cli import main
from omicskern.tokenizers import CharTokenizer, KmerTokenizer
from omicskern.io.fasta import window_starts

RECORDS = {"chrA": "ACGTACGTTTGACCA" * 40 + "acgtn", "chrB": "NNNNACGTACGGGT", "chrC": "GATTACA" * 11}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMICSKERN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fasta(tmp_path):
    p = tmp_path / "in.fa"
    p.write_text("".join(f">{n}\n{s}\n" for n, s in RECORDS.items()))
    return p


def load(path):
    z = np.load(path)
    return {k: z[k] for k in z.files}


def test_default_runs_on_bundled_lambda(capsys):
    assert main(["tokenize"]) == 0
    out = capsys.readouterr().err  # summaries go to stderr
    assert "1 record(s)" in out and "48,502 bases -> 48,504 tokens" in out and "Mbp/s" in out


def test_npz_output_matches_tokenizer(fasta, tmp_path, capsys):
    out = tmp_path / "tokens.npz"
    assert main(["tokenize", str(fasta), "--tokenizer", "kmer", "--k", "6", "--out", str(out), "--quiet"]) == 0
    z = load(out)
    tok = KmerTokenizer(6)
    assert z["names"].tolist() == list(RECORDS)
    assert z["starts"].tolist() == [0, 0, 0] and z["ends"].tolist() == [len(s) for s in RECORDS.values()]
    for i, seq in enumerate(RECORDS.values()):
        assert z["ids"][z["offsets"][i]:z["offsets"][i + 1]].tolist() == tok.encode(seq).tolist()
    meta = json.loads(str(z["meta"]))
    assert meta["tokenizer"] == {"tokenizer": "kmer", "add_special_tokens": True, "k": 6, "kmer_mode": "nt",
                                 "on_invalid": "error"}
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # no temporary file left


def test_windows(fasta, tmp_path):
    out = tmp_path / "w.npz"
    assert main(["tokenize", str(fasta), "--window", "100", "--stride", "60", "--out", str(out),
                 "--no-special-tokens", "--quiet"]) == 0
    z = load(out)
    tok = CharTokenizer(add_special_tokens=False)
    rows = [(n, s) for n, seq in RECORDS.items() for s in window_starts(len(seq), 100, 60)]
    assert [(str(n), int(s)) for n, s in zip(z["names"], z["starts"])] == rows
    for r, (name, s) in enumerate(rows):
        seq = RECORDS[name][s:s + 100]
        assert z["ends"][r] == s + len(seq)
        assert z["ids"][z["offsets"][r]:z["offsets"][r + 1]].tolist() == tok.encode(seq).tolist()


def test_directory_output_resumes(fasta, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["tokenize", str(fasta), "--tokenizer", "kmer", "--kmer-mode", "overlap", "--k", "4",
            "--window", "64", "--out", str(out), "--quiet"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [r["name"] for r in manifest["records"]] == list(RECORDS)
    tok = KmerTokenizer(4, mode="overlap")
    for r in manifest["records"]:
        z = load(out / r["shard"])
        seq = RECORDS[r["name"]]
        assert len(z["names"]) == r["rows"] == len(window_starts(len(seq), 64, 64))
        assert z["ids"][z["offsets"][0]:z["offsets"][1]].tolist() == tok.encode(seq[:64]).tolist()
    capsys.readouterr()

    # a rerun skips everything; a lost shard is redone, the others are not touched
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert main(args) == 0
    assert "0 record(s)" in capsys.readouterr().err
    (out / "shard-00001.npz").unlink()
    assert main(args) == 0
    assert "1 record(s)" in capsys.readouterr().err
    assert (out / "shard-00001.npz").exists()
    for name in ("shard-00000.npz", "shard-00002.npz"):
        assert (out / name).stat().st_mtime_ns == mtimes[name]

    # another job into the same folder is refused, unless --overwrite
    other = args[:]
    other[other.index("4")] = "5"
    assert main(other) == 1  # a runtime refusal (the arguments are fine)
    assert "output belongs to another job" in capsys.readouterr().err
    assert main(other + ["--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["tokenizer"]["k"] == 5


def test_invalid_character_names_record_and_position(tmp_path, capsys):
    p = tmp_path / "bad.fa"
    p.write_text(">good\nACGT\n>chr7 x\nACGTACGTAC\nACGXA\n")
    assert main(["tokenize", str(p), "--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err
    assert "record 'chr7', position 13" in err and "'X'" in err and "--on-invalid" in err
    assert not (tmp_path / "o.npz").exists()
    assert main(["tokenize", str(p), "--window", "4", "--stride", "2"]) == 1
    assert "record 'chr7', position 13" in capsys.readouterr().err
    assert main(["tokenize", str(p), "--on-invalid", "unk", "--out", str(tmp_path / "o.npz")]) == 0
    assert load(tmp_path / "o.npz")["ids"].tolist().count(6) == 1


def test_argument_errors(fasta, tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "missing.fa")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["tokenize", str(fasta), "--records", "chrZ"]) == 2
    assert "chrZ" in capsys.readouterr().err
    assert main(["tokenize", str(fasta), "--stride", "5"]) == 2
    assert main(["tokenize", str(fasta), "--window", "0"]) == 2
    assert main(["tokenize", str(fasta), "--tokenizer", "kmer", "--k", "12"]) == 2
    assert "k must" in capsys.readouterr().err
    assert main(["tokenize", str(fasta), "--tokenizer", "bpe"]) == 2  # needs --tokenizer-json
    assert "omicskern tokenize: error: --tokenizer bpe needs --tokenizer-json" in capsys.readouterr().err


def test_records_subset(fasta, tmp_path):
    out = tmp_path / "sub.npz"
    assert main(["tokenize", str(fasta), "--records", "chrC", "chrA", "--out", str(out), "--quiet"]) == 0
    assert load(out)["names"].tolist() == ["chrC", "chrA"]


@pytest.mark.parametrize("content", [pytest.param("{}", id="empty-object"), pytest.param("not json", id="not-json")])
def test_bad_tokenizer_json_is_a_clear_error(tmp_path, content, capsys):
    j = tmp_path / "tokenizer.json"
    j.write_text(content)
    assert main(["tokenize", "--tokenizer", "bpe", "--tokenizer-json", str(j)]) == 1  # unreadable: runtime
    assert re.search("cannot load .*tokenizer.json", capsys.readouterr().err)
    assert main(["tokenize", "--tokenizer", "bpe", "--tokenizer-json", str(tmp_path / "missing.json")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_bpe_with_tokenizer_json(data_dir, tmp_path):
    from omicskern.tokenizers.bpe import BPETokenizer

    tj = data_dir / "dnabert2_tokenizer.json"
    out = tmp_path / "bpe.npz"
    assert main(["tokenize", "--tokenizer", "bpe", "--tokenizer-json", str(tj), "--window", "1000",
                 "--out", str(out), "--quiet"]) == 0
    z = load(out)
    tok = BPETokenizer.from_file(tj)
    assert z["ids"][z["offsets"][0]:z["offsets"][1]].tolist() == tok.encode(
        (data_dir / "lambda_phage.fa").read_text().split("\n", 1)[1].replace("\n", "")[:1000]).tolist()
