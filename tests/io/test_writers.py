"""Batch writers (omicskern.io.writers): npz / parquet / datasets round trips, the file layout of
the earlier CellTokens files, and batches of the DNA tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from omicskern.batch import Batch
from omicskern.io.writers import load_npz


def _tokens():
    return Batch(np.array([5, 6, 7, 8, 9, 10], np.int32), np.array([0, 2, 2, 6], np.int64),
                 values=np.array([0, 3, 1, 2, 2, 4], np.int32), source=np.array([0, 3, 4], np.int64),
                 names=np.array(["a", "b", "c"]), obs={"cell_type": np.array(["T", "B", "T"])})


def test_npz_round_trip(tmp_path):
    t = _tokens()
    t.save(tmp_path / "out.npz")
    back = load_npz(tmp_path / "out.npz")
    for k in ("input_ids", "cu_seqlens", "values", "source", "names"):
        np.testing.assert_array_equal(getattr(back, k), getattr(t, k))
    np.testing.assert_array_equal(back.obs["cell_type"], t.obs["cell_type"])
    assert list(back[2]) == [7, 8, 9, 10] and len(back[1]) == 0


def test_parquet_and_dataset_writers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    t = _tokens()
    t.save(tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    tab = pq.read_table(tmp_path / "out.parquet")
    assert tab.column("input_ids").to_pylist() == [[5, 6], [], [7, 8, 9, 10]]
    assert tab.column("length").to_pylist() == [2, 0, 4]
    datasets = pytest.importorskip("datasets")
    t.save(tmp_path / "out.dataset")
    ds = datasets.load_from_disk(str(tmp_path / "out.dataset"))
    assert ds["input_ids"] == [[5, 6], [], [7, 8, 9, 10]] and ds["length"] == [2, 0, 4]
    assert ds["cell_type"] == ["T", "B", "T"]
    assert pa is not None


def test_concat_keeps_order():
    t = _tokens()
    both = Batch.concat([t, _tokens()])
    assert len(both) == 6
    np.testing.assert_array_equal(both[5], t[2])
    np.testing.assert_array_equal(both.values[-4:], t.values[-4:])


def test_npz_layout_is_the_cell_tokens_one(tmp_path):
    # the keys (and their order) of the files the cell tokenizers wrote before Batch
    _tokens().save(tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as z:
        assert z.files == ["input_ids", "offsets", "length", "obs_index", "values", "obs_names", "obs/cell_type"]
        assert z["offsets"].dtype == np.int64 and z["length"].tolist() == [2, 0, 4]
        assert z["obs_index"].tolist() == [0, 3, 4] and z["obs_names"].dtype.kind == "U"


@pytest.mark.parametrize("keys", [("offsets", "obs_index", "obs_names"), ("cu_seqlens", "source", "names")],
                         ids=["cell-tokens-keys", "batch-keys"])
def test_load_npz_reads_old_and_new_keys(tmp_path, keys):
    cu, src, names = keys
    np.savez(tmp_path / "f.npz", input_ids=np.array([1, 2, 3], np.int32), **{cu: np.array([0, 1, 3])},
             **{src: np.array([4, 9])}, **{names: np.array(["x", "y"])}, **{"obs/donor": np.array([1, 2])})
    b = load_npz(tmp_path / "f.npz")
    assert b.cu_seqlens.dtype == np.int64 and b.cu_seqlens.tolist() == [0, 1, 3]
    assert b.source.tolist() == [4, 9] and b.names.tolist() == ["x", "y"] and b.obs["donor"].tolist() == [1, 2]
    assert b[1].tolist() == [2, 3] and b.values is None


def test_load_npz_names_what_is_missing(tmp_path):
    np.savez(tmp_path / "other.npz", ids=np.zeros(3))
    with pytest.raises(KeyError, match=r"other.npz: not a token batch file .*has ids"):
        load_npz(tmp_path / "other.npz")


def _dna_batch():
    return Batch(np.array([2, 7, 8, 9, 3, 2, 5, 3], np.int32), np.array([0, 5, 8]),
                 soft_mask=np.array([0, 1, 1, 0, 0, 0, 1, 0], bool),
                 token_spans=np.array([[0, 0], [0, 1], [1, 2], [2, 3], [3, 3], [0, 0], [0, 1], [1, 1]]),
                 names=np.array(["chr1", "chr2"]))


def test_dna_batch_fields_round_trip(tmp_path):
    b = _dna_batch()
    assert b.save(tmp_path / "dna.npz") == "npz"
    back = load_npz(tmp_path / "dna.npz")
    for k in ("input_ids", "cu_seqlens", "soft_mask", "token_spans", "source", "names"):
        np.testing.assert_array_equal(getattr(back, k), getattr(b, k))
    assert back.soft_mask.dtype == bool and back.token_spans.shape == (8, 2)
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    b.save(tmp_path / "dna.parquet")
    tab = pq.read_table(tmp_path / "dna.parquet")
    assert tab.column("soft_mask").to_pylist()[1] == [False, True, False]
    assert tab.column("token_spans").to_pylist()[1] == [[0, 0], [0, 1], [1, 1]]
    assert tab.column("obs_names").to_pylist() == ["chr1", "chr2"]


def test_formats_and_errors(tmp_path):
    from omicskern.io.writers import infer_format, save_batch, to_arrow

    assert [infer_format(p) for p in ("a.npz", "a.NPZ", "a.parquet", "a.pq", "a", "a.dataset")] == [
        "npz", "npz", "parquet", "parquet", "dataset", "dataset"]
    with pytest.raises(ValueError, match="unknown output format 'csv'"):
        save_batch(_tokens(), tmp_path / "x", "csv")
    with pytest.raises(TypeError, match="expected an omicskern.batch.Batch"):
        save_batch({"input_ids": [1]}, tmp_path / "x.npz")
    pytest.importorskip("pyarrow")
    clash = _tokens().replace(obs={"length": np.array([1, 2, 3])})
    with pytest.raises(ValueError, match="obs column 'length' clashes"):
        to_arrow(clash)


def test_torch_batch_is_written_as_numpy(tmp_path):
    pytest.importorskip("torch")
    t = _tokens().to_torch()
    t.save(tmp_path / "t.npz")
    back = load_npz(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.cu_seqlens, _tokens().cu_seqlens)
    np.testing.assert_array_equal(back.values, _tokens().values)
