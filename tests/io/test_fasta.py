"""FASTA reading (plain and BGZF) and windows."""

from __future__ import annotations

import gzip
import os
import shutil
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omicskern.io.fasta import FastaFile, window_starts

RECORDS = {"r1": "ACGTACGTACGTAACCGGTT" * 7 + "ACG", "r2": "acgtnnNNACgt", "empty": "", "r4": "N" * 75}


def write_fasta(path, records, width=60):
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name} some description\n")
            for i in range(0, len(seq), width):
                f.write(seq[i:i + width] + "\n")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("OMICSKERN_CACHE", str(d))
    return d / "faidx"


@pytest.fixture
def plain(tmp_path):
    p = tmp_path / "multi.fa"
    write_fasta(p, RECORDS)
    return p


@pytest.fixture
def bgzipped(tmp_path, plain):
    bgzf = pytest.importorskip("Bio.bgzf")
    p = tmp_path / "multi.fa.gz"
    with bgzf.BgzfWriter(str(p), "wb") as w:
        w.write(plain.read_bytes())
    return p


def test_lambda(data_dir, cache):
    fa = FastaFile(data_dir / "lambda_phage.fa")
    assert fa.names == ["gi|9626243|ref|NC_001416.1|"] and fa.lengths == [48502]
    seq = fa.sequence(fa.names[0])
    lines = (data_dir / "lambda_phage.fa").read_text().split("\n")
    assert seq == "".join(lines[1:]) and seq.startswith("GGGCGGCGACCTCGCGGGTTTTCGC")
    assert not (data_dir / "lambda_phage.fa.fai").exists()  # the index went to the cache folder
    assert len(list(cache.iterdir())) == 1


@pytest.mark.parametrize("kind", ["plain", "bgzipped"])
def test_records_keep_case(kind, request, cache):
    path = request.getfixturevalue(kind)
    with FastaFile(path) as fa:
        assert fa.names == list(RECORDS)
        assert fa.lengths == [len(s) for s in RECORDS.values()]
        assert dict(fa.records()) == RECORDS
        assert fa.total_length == sum(map(len, RECORDS.values()))
        with pytest.raises(KeyError, match="no record 'chrX'"):
            fa.sequence("chrX")
    assert not any(p.name.endswith((".fai", ".gzi")) for p in path.parent.iterdir())


def test_existing_fresh_index_is_used(plain, cache):
    pyfaidx = pytest.importorskip("pyfaidx")
    pyfaidx.Faidx(str(plain)).close()  # writes multi.fa.fai beside the FASTA
    assert (plain.parent / "multi.fa.fai").exists()
    with FastaFile(plain) as fa:
        assert dict(fa.records()) == RECORDS
    assert not cache.exists() or not any(cache.iterdir())


def test_stale_index_is_not_trusted(plain, cache):
    """An index older than its FASTA (edited after indexing) is replaced by a fresh one in the cache."""
    pyfaidx = pytest.importorskip("pyfaidx")
    pyfaidx.Faidx(str(plain)).close()
    changed = {"r1": "TTTT", "r2": "GG"}
    write_fasta(plain, changed)
    old = plain.stat().st_mtime - 100
    os.utime(plain.parent / "multi.fa.fai", (old, old))
    with FastaFile(plain) as fa:
        assert dict(fa.records()) == changed


def test_read_only_folder(tmp_path, plain, cache):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(plain, ro / "x.fa")
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with FastaFile(ro / "x.fa") as fa:
            assert dict(fa.records()) == RECORDS
    finally:
        ro.chmod(stat.S_IRWXU)


def test_plain_gzip_is_refused(tmp_path, plain, cache):
    p = tmp_path / "multi.fa.gz"
    with gzip.open(p, "wb") as f:
        f.write(plain.read_bytes())
    with pytest.raises(ValueError, match="not BGZF"):
        FastaFile(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        FastaFile(tmp_path / "nope.fa")


def test_windows(plain, cache):
    with FastaFile(plain) as fa:
        wins = list(fa.windows(50, 30))
    for name, seq in RECORDS.items():
        got = [(w.start, w.end, bytes(w.seq).decode()) for w in wins if w.name == name]
        starts = window_starts(len(seq), 50, 30)
        assert got == [(s, min(s + 50, len(seq)), seq[s:s + 50]) for s in starts]
    assert [w for w in wins if w.name == "empty"] == []


@given(length=st.integers(0, 500), window=st.integers(1, 60), stride=st.integers(1, 60))
def test_window_starts_cover(length, window, stride):
    starts = window_starts(length, window, stride)
    if length == 0:
        assert starts == []
        return
    assert starts[0] == 0 and all(b - a == stride for a, b in zip(starts, starts[1:]))
    # the last window reaches the end, or (stride > window) the next start would be past it
    assert starts[-1] + window >= length or starts[-1] + stride >= length
    assert all(s + window < length for s in starts[:-1])  # and it is the first that does
    if stride <= window:  # every base covered
        covered = set()
        for s in starts:
            covered.update(range(s, min(s + window, length)))
        assert covered == set(range(length))


def test_bad_window():
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)
    with pytest.raises(ValueError):
        window_starts(10, 5, -1)


def test_shared_ecoli_bgzf(shared_dir):
    """The real BGZF genome with its shipped .fai/.gzi (read-only folder)."""
    with FastaFile(shared_dir / "data" / "dna" / "ecoli_k12_mg1655.fa.gz") as fa:
        assert fa.names == ["K-12-MG1655"] and fa.lengths == [4639675]
        seq = fa.sequence("K-12-MG1655")
    assert seq.startswith("AGCTTTTCATTCTGACTGCAACGGGCAATATGTC") and len(seq) == 4639675
