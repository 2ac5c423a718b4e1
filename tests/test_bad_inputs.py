"""Malformed inputs end in one line naming the file and what is wrong: exit 1 through the CLI
(2 for a bad command line), a clear exception through the API, never a traceback.

The corpus is ``tests/data/bad/`` (a few bytes to 4 KB each; ``fasta_*`` files are the FASTA
reader's, tested with it):

- ``truncated.h5ad``: the first 4 KB of a valid h5ad; ``garbage.h5ad``: text; ``empty.h5ad``: 0
  bytes; ``no_x.h5ad``: valid HDF5 without an ``X`` (a directory named ``*.h5ad`` is made here);
- ``garbage.pkl``: not a pickle; ``empty.pkl``: 0 bytes; ``list.pkl``: a pickled list, not a dict;
  ``garbage.json``: broken JSON; ``bad_values.tsv``: a token id that is not a number.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omicskern.cli import main
from omicskern.errors import InvalidFileError, OutputNotWritableError

BAD = Path(__file__).resolve().parent / "data" / "bad"
PBMC = Path(__file__).resolve().parent / "data" / "sc" / "pbmc_10x_v3_small.h5ad"
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def dicts(tmp_path):
    """A valid Geneformer token dictionary and median dictionary for PBMC (half of its genes)."""
    import anndata as ad

    a = ad.read_h5ad(PBMC, backed="r")
    keys = list(a.var["ensembl_id"][::2])
    a.file.close()
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{k: i + 4 for i, k in enumerate(keys)}}
    with open(tmp_path / "tokens.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(tmp_path / "medians.pkl", "wb") as f:
        pickle.dump({k: 1.5 for k in keys}, f)
    return tmp_path / "tokens.pkl", tmp_path / "medians.pkl"


def _cells(inp, tok, med, out, *extra):
    return ["tokenize-cells", str(inp), "--method", "rank", "--token-dict", str(tok), "--gene-medians", str(med),
            "--out", str(out), "--no-progress", *extra]


def _run(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"omicskern {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- .h5ad inputs -------------------------------------------------------------------------------

def _h5ad_case(name: str, tmp_path: Path) -> Path:
    if name == "directory.h5ad":
        d = tmp_path / "directory.h5ad"
        d.mkdir()
        return d
    return BAD / name


H5AD_CASES = [("truncated.h5ad", "truncated"), ("garbage.h5ad", "no HDF5 signature"),
              ("empty.h5ad", "empty (0 bytes)"), ("no_x.h5ad", "without an X matrix"),
              ("directory.h5ad", "is a directory")]


@pytest.mark.parametrize("name,why", H5AD_CASES)
def test_bad_h5ad_cli(name, why, tmp_path, dicts, capsys):
    path = _h5ad_case(name, tmp_path)
    rc, err = _run(capsys, _cells(path, *dicts, tmp_path / "o.npz"))
    line = _one_error_line(err, "tokenize-cells")
    assert rc == 1 and str(path) in line and why in line
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("name,why", H5AD_CASES)
def test_bad_h5ad_api(name, why, tmp_path, dicts):
    from omicskern.io.cells import open_cells
    from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer

    path = _h5ad_case(name, tmp_path)
    exc = IsADirectoryError if name == "directory.h5ad" else InvalidFileError
    with pytest.raises(exc, match=re.escape(why)) as e:
        open_cells(path)
    assert str(path) in str(e.value)
    with pytest.raises(exc, match=re.escape(why)):
        RankValueTokenizer(*map(str, dicts)).tokenize(str(path))
    with pytest.raises(exc, match=re.escape(why)):
        BinnedValueTokenizer({"<pad>": 0, "<cls>": 1, "A": 2}).tokenize(path)


def test_bad_h5ad_subprocess(tmp_path, dicts):
    """A real ``python -m omicskern`` process: exit 1, one line, no traceback."""
    p = subprocess.run([sys.executable, "-m", "omicskern", *_cells(BAD / "truncated.h5ad", *dicts, tmp_path / "o.npz")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    line = _one_error_line(p.stderr, "tokenize-cells")
    assert "truncated.h5ad" in line and "truncated" in line


# -- gene dictionaries ----------------------------------------------------------------------------

DICT_CASES = [("garbage.pkl", "not a readable pickled gene dictionary"), ("empty.pkl", "empty"),
              ("list.pkl", "expected a pickled dict, got list"), ("garbage.json", "not a readable JSON"),
              ("bad_values.tsv", "values must be int")]


@pytest.mark.parametrize("name,why", DICT_CASES)
@pytest.mark.parametrize("flag", ["token", "medians"])
def test_bad_gene_dict_cli(name, why, flag, tmp_path, dicts, capsys):
    tok, med = dicts
    if flag == "token":
        tok = BAD / name
    else:
        med = BAD / name
        why = why.replace("values must be int", "values must be float")
    rc, err = _run(capsys, _cells(PBMC, tok, med, tmp_path / "o.npz"))
    line = _one_error_line(err, "tokenize-cells")
    assert rc == 1 and str(BAD / name) in line and why in line


@pytest.mark.parametrize("name,why", DICT_CASES)
def test_bad_gene_dict_api(name, why):
    from omicskern.io.gene_dict import load_token_dictionary
    from omicskern.tokenizers import BinnedValueTokenizer, RankValueTokenizer

    with pytest.raises(InvalidFileError, match=re.escape(why)) as e:
        load_token_dictionary(BAD / name)
    assert str(BAD / name) in str(e.value) and e.value.path == str(BAD / name)
    assert isinstance(e.value, ValueError)  # what callers caught before
    with pytest.raises(InvalidFileError, match=re.escape(why)):
        RankValueTokenizer(str(BAD / name), {"ENSG1": 1.0})
    with pytest.raises(InvalidFileError, match=re.escape(why)):
        BinnedValueTokenizer(str(BAD / name))


def test_gene_dict_directory(tmp_path):
    from omicskern.io.gene_dict import load_gene_medians

    (tmp_path / "d.pkl").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_gene_medians(tmp_path / "d.pkl")


# -- output location ------------------------------------------------------------------------------

def _no_work(monkeypatch):
    """Fails the test if any tokenizing starts."""
    import omicskern.pipelines.tokenize as pt

    def boom(*a, **k):
        raise AssertionError("work started before the output location was checked")
    monkeypatch.setattr(pt, "tokenize_fasta", boom)
    monkeypatch.setattr(pt, "tokenize_cells", boom)


@pytest.mark.parametrize("out", ["x.npz", "shards"])
def test_tokenize_out_under_a_file(out, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / out
    rc, err = _run(capsys, ["tokenize", "--out", str(target), "--quiet"])
    line = _one_error_line(err, "tokenize")
    assert rc == 1 and str(target) in line and "is a file, not a folder" in line


@pytest.mark.skipif(ROOT or os.name == "nt", reason="root writes into read-only folders")
@pytest.mark.parametrize("out", ["x.npz", "shards", "new/deeper/shards"])
def test_tokenize_read_only_folder(out, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = _run(capsys, ["tokenize", "--out", str(ro / out), "--quiet"])
    finally:
        ro.chmod(0o755)
    line = _one_error_line(err, "tokenize")
    assert rc == 1 and str(ro / out) in line and "not writable" in line


@pytest.mark.skipif(ROOT or os.name == "nt", reason="root writes into read-only folders")
@pytest.mark.parametrize("out", ["x.npz", "x.dataset"])
def test_tokenize_cells_read_only_folder(out, tmp_path, dicts, monkeypatch, capsys):
    _no_work(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = _run(capsys, _cells(PBMC, *dicts, ro / out))
    finally:
        ro.chmod(0o755)
    line = _one_error_line(err, "tokenize-cells")
    assert rc == 1 and str(ro / out) in line and "not writable" in line


@pytest.mark.parametrize("out", ["x.npz", "x.dataset"])
def test_tokenize_cells_out_under_a_file(out, tmp_path, dicts, monkeypatch, capsys):
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("")
    rc, err = _run(capsys, _cells(PBMC, *dicts, tmp_path / "file" / out))
    line = _one_error_line(err, "tokenize-cells")
    assert rc == 1 and "is a file, not a folder" in line


def test_check_writable_api(tmp_path, monkeypatch):
    from omicskern.io.writers import check_writable

    check_writable(tmp_path / "a" / "b" / "x.npz")  # missing folders are created later: fine
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []  # leaves nothing behind
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_writable(tmp_path / "f" / "x.npz")

    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # a read-only folder, also when running as root
    with pytest.raises(OutputNotWritableError, match="not writable") as e:
        check_writable(tmp_path / "x.npz")
    assert isinstance(e.value, PermissionError) and str(tmp_path) in str(e.value)


# -- --out / --format, --records, --threads -------------------------------------------------------

@pytest.mark.parametrize("out,fmt", [("x.out", "npz"), ("x.npz", "parquet"), ("x.npz", "dataset"),
                                     ("x.parquet", "npz")])
def test_tokenize_cells_format_suffix_mismatch(out, fmt, tmp_path, dicts, capsys):
    rc, err = _run(capsys, _cells(PBMC, *dicts, tmp_path / out, "--format", fmt))
    line = _one_error_line(err, "tokenize-cells")
    assert rc == 2 and f"--format {fmt}" in line and str(tmp_path / out) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["medians.pkl", "tokens.pkl"]


def test_save_npz_writes_exactly_the_path(tmp_path):
    from omicskern.batch import Batch
    from omicskern.io.writers import load_npz, save_batch

    b = Batch.from_rows([[1, 2], [3]])
    assert save_batch(b, tmp_path / "x.out", "npz") == "npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.out"]
    np.testing.assert_array_equal(load_npz(tmp_path / "x.out").input_ids, [1, 2, 3])


def test_tokenize_records_twice_refused(capsys):
    rc, err = _run(capsys, ["tokenize", "--records", "A", "B", "A", "--quiet"])
    line = _one_error_line(err, "tokenize")
    assert rc == 2 and "--records: A given more than once" in line


@pytest.mark.parametrize("cmd", ["tokenize", "tokenize-cells"])
@pytest.mark.parametrize("value,code", [("2.5", 2), ("-1", 2), ("two", 2)])
def test_threads_flag(cmd, value, code, tmp_path, dicts, capsys):
    argv = (["tokenize", "--quiet"] if cmd == "tokenize" else _cells(PBMC, *dicts, tmp_path / "o.npz"))
    rc, err = _run(capsys, argv + ["--threads", value])
    assert rc == code and "--threads" in err and "Traceback" not in err


# -- API: num_threads, token ids ------------------------------------------------------------------

def _dna_tokenizers():
    from omicskern.tokenizers.bpe import BPETokenizer
    from omicskern.tokenizers.char import CharTokenizer
    from omicskern.tokenizers.kmer import KmerTokenizer

    bpe_json = Path(__file__).resolve().parent / "data" / "dnabert2_tokenizer.json"
    return [lambda **kw: CharTokenizer(**kw), lambda **kw: KmerTokenizer(6, **kw),
            lambda **kw: BPETokenizer.from_file(str(bpe_json), **kw)]


@pytest.mark.parametrize("make", _dna_tokenizers(), ids=["char", "kmer", "bpe"])
@pytest.mark.parametrize("bad", [2.5, True, "2", None])
def test_num_threads_checked(make, bad):
    with pytest.raises(TypeError, match="num_threads must be an int"):
        make(num_threads=bad)
    tok = make()
    with pytest.raises(TypeError, match="num_threads must be an int"):
        tok.num_threads = bad
    if bad is not None:  # encode_batch(num_threads=None) means the tokenizer's own
        with pytest.raises(TypeError, match="num_threads must be an int"):
            tok.encode_batch(["ACGTACGTAC"], num_threads=bad)
    tok.num_threads = np.int64(2)  # numpy ints are ints
    assert tok.num_threads == 2 and type(tok.num_threads) is int
    assert len(tok.encode_batch(["ACGTACGTAC"], num_threads=1)) == 1


def test_token_ids_decode():
    from omicskern.batch import Batch, PaddedBatch
    from omicskern.tokenizers.char import CharTokenizer

    tok = CharTokenizer()
    with pytest.raises(ValueError, match="token id -7 at position 0 is outside the vocabulary"):
        tok.decode([-7])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([4.5])
    with pytest.raises(ValueError, match="-7"):
        tok.decode_batch([[7, 8], [-7]])
    with pytest.raises(TypeError, match="integer"):
        tok.decode_batch(PaddedBatch(np.array([[4.5, 7.0]]), np.ones((1, 2), bool)))
    with pytest.raises(ValueError, match="-7"):
        tok.decode_batch(Batch.from_rows([[7], [-7]]))


def test_token_ids_batch_construction():
    from omicskern.batch import Batch, PaddedBatch

    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        Batch(np.array([4.5, 7.0]), np.array([0, 2]))
    with pytest.raises(TypeError, match="row 0: token ids must be integers"):
        Batch.from_rows([[4.5, 7]])  # was silently [4, 7]
    with pytest.raises(ValueError, match="does not fit uint8"):
        Batch.from_rows([[-7]], dtype=np.uint8)  # was silently 249
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        PaddedBatch(np.array([[4.5]]), np.ones((1, 1), bool))
    # a container does not know the vocabulary: -7 stays -7 here and is refused where the
    # vocabulary is known (decode, the models' input check)
    assert Batch.from_rows([[-7]]).input_ids.tolist() == [-7]
    assert Batch(np.zeros(0), np.zeros(1, np.int64)).input_ids.dtype.kind == "i"  # empty: nothing to lose


def test_token_ids_batch_torch():
    torch = pytest.importorskip("torch")
    from omicskern.batch import Batch

    with pytest.raises(TypeError, match="integer token ids"):
        Batch(torch.tensor([4.5]), torch.tensor([0, 1]))
    assert Batch(torch.tensor([4]), torch.tensor([0, 1])).input_ids.tolist() == [4]
