"""FASTA index trust and bad files: partial / foreign indexes are never trusted, broken files
give one error naming the file (API and CLI)."""

from __future__ import annotations

import os
import shutil

import pytest

from omicskern.cli import main
from omicskern.io.fasta import FastaFile
from omicskern.pipelines.tokenize import tokenize_fasta
from omicskern.tokenizers import CharTokenizer

pyfaidx = pytest.importorskip("pyfaidx")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMICSKERN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "faidx"


def _many(path, n=2000, length=40):
    seqs = {f"read{i}": ("ACGT" * 20)[i % 4:i % 4 + length] for i in range(n)}
    path.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    return seqs


def _cached_fai(cache):
    fais = [p for p in cache.iterdir() if p.name.endswith(".fai") and not p.name.startswith(".")]
    assert len(fais) == 1
    return fais[0]


@pytest.mark.parametrize("cut", ["line", "mid-line"])
def test_partial_cached_index_is_rebuilt(tmp_path, cache, cut):
    """A partial .fai (as a kill of the old in-place build left) is not trusted: before the fix a
    rerun read 9,868 of 300,000 records, or failed with 'not enough values to unpack'."""
    fa_path = tmp_path / "reads.fa"
    seqs = _many(fa_path)
    with FastaFile(fa_path) as fa:
        assert len(fa) == len(seqs)
    fai = _cached_fai(cache)
    text = fai.read_text()
    lines = text.splitlines(keepends=True)
    fai.write_text("".join(lines[:100]) if cut == "line" else text[: len(text) // 3 + 5])
    with FastaFile(fa_path) as fa:
        assert fa.names == list(seqs) and dict(fa.records()) == seqs
    assert fai.read_text() == text  # rebuilt in the cache


def test_killed_index_build_leaves_no_partial_index(tmp_path, cache, monkeypatch):
    """The index is written under a temporary name and renamed: a build stopped half-way
    (here: the copy into the index file dies after half of it) leaves nothing under the final
    name, and the next open builds a complete one."""
    fa_path = tmp_path / "reads.fa"
    seqs = _many(fa_path)
    real_copy = shutil.copyfileobj

    def dies_half_way(src, dst, *a):
        data = src.read()
        dst.write(data[: len(data) // 2])
        dst.flush()
        raise KeyboardInterrupt  # like a kill: nothing after this runs

    monkeypatch.setattr(pyfaidx.shutil, "copyfileobj", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        FastaFile(fa_path)
    assert not [p for p in cache.iterdir() if p.name.endswith(".fai")]  # no final-name index
    monkeypatch.setattr(pyfaidx.shutil, "copyfileobj", real_copy)
    with FastaFile(fa_path) as fa:
        assert fa.names == list(seqs)
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_foreign_newer_index_beside_fasta_is_not_trusted(tmp_path, data_dir, cache):
    """A .fai beside the FASTA, newer than it but made for another file (here: the full lambda
    genome's next to a truncated copy) used to let the truncated FASTA pass with 29,505 of
    48,502 bases; now it is detected and a fresh index is built in the cache."""
    full = (data_dir / "lambda_phage.fa").read_bytes()
    trunc = tmp_path / "lambda.fa"
    trunc.write_bytes(full[: len(full) * 6 // 10])
    shutil.copy(data_dir / "lambda_phage.fa", tmp_path / "full.fa")
    pyfaidx.Faidx(str(tmp_path / "full.fa")).close()
    os.replace(tmp_path / "full.fa.fai", tmp_path / "lambda.fa.fai")
    t = trunc.stat().st_mtime + 10
    os.utime(tmp_path / "lambda.fa.fai", (t, t))
    with FastaFile(trunc) as fa:
        expect = "".join(trunc.read_text().split("\n")[1:])
        assert fa.lengths == [len(expect)] and fa.sequence(fa.names[0]) == expect
        assert fa.index_path.parent == cache and any("does not fit" in n for n in fa.index_notes)
    # and the other way round: the truncated file's index next to the full genome
    os.replace(tmp_path / "lambda.fa.fai", tmp_path / "x.fai")
    pyfaidx.Faidx(str(trunc)).close()  # an index of the truncated copy...
    shutil.copy(data_dir / "lambda_phage.fa", tmp_path / "full2.fa")
    os.replace(tmp_path / "lambda.fa.fai", tmp_path / "full2.fa.fai")  # ...beside the full one
    t = (tmp_path / "full2.fa").stat().st_mtime + 10
    os.utime(tmp_path / "full2.fa.fai", (t, t))
    with FastaFile(tmp_path / "full2.fa") as fa:
        assert fa.lengths == [48502]


def test_record_shorter_than_index_raises(tmp_path, cache):
    p = tmp_path / "a.fa"
    p.write_text(">a\n" + "ACGT" * 30 + "\n>b\n" + "GGCC" * 30 + "\n")
    fa = FastaFile(p)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 50)
    with pytest.raises(ValueError, match=r"'b' has .* of its 120 bases"):
        fa.sequence("b")
    fa.close()


BAD = {  # file -> what the message must say
    "fasta_truncated_bgzf.fa.gz": "truncated or corrupt BGZF",
    "fasta_blank_lines.fa": "blank lines",
    "fasta_binary.fa": "not a text FASTA file",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_api(data_dir, name):
    path = data_dir / "bad" / name
    with pytest.raises(ValueError) as e:
        with FastaFile(path) as fa:
            list(fa.records())
    assert str(path) in str(e.value) and BAD[name] in str(e.value)
    with pytest.raises(ValueError, match=BAD[name]):
        tokenize_fasta(path, CharTokenizer())


def test_blank_line_error_names_the_line(data_dir):
    with pytest.raises(ValueError, match="line 4"):
        FastaFile(data_dir / "bad" / "fasta_blank_lines.fa")


def test_directory_is_named_as_such(tmp_path):
    d = tmp_path / "genome.fa"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        FastaFile(d)


@pytest.mark.parametrize("name", sorted(BAD) + ["<dir>"])
def test_bad_files_cli(data_dir, tmp_path, capsys, name):
    if name == "<dir>":
        path, what = tmp_path / "genome.fa", "is a directory"
        path.mkdir()
    else:
        path, what = data_dir / "bad" / name, BAD[name]
    rc = main(["tokenize", str(path), "--out", str(tmp_path / "o.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("omicskern tokenize: error: ") and str(path) in err and what in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()
