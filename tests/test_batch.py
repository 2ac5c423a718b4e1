"""omicskern.batch: the one batch type, against a plain per-row Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from omicskern.batch import Batch, PaddedBatch

LENGTHS = {
    "odd": [7, 1, 13, 0, 5],
    "one-row": [9],
    "empty-rows": [0, 0, 3],
    "none": [],
}


def _rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 4000, n).astype(np.int32) for n in lengths]


def _batch(lengths, seed=0, *, fields=True):
    rows = _rows(lengths, seed)
    b = Batch.from_rows(rows)
    if not fields:
        return b, rows
    rng = np.random.default_rng(seed + 1)
    t = b.num_tokens
    starts = rng.integers(0, 100, (t, 1))
    return b.replace(values=rng.integers(0, 51, t).astype(np.int32), soft_mask=rng.random(t) < 0.3,
                     token_spans=np.hstack([starts, starts + 6]).astype(np.int64),
                     names=np.array([f"r{i}" for i in range(len(rows))]),
                     obs={"label": np.arange(len(rows)) * 10}), rows


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_rows_and_fields(lengths):
    b, rows = _batch(lengths)
    assert len(b) == len(rows) and b.num_tokens == sum(lengths)
    assert b.input_ids.dtype == np.int32 and b.cu_seqlens.dtype == np.int64
    assert b.lengths.tolist() == list(lengths) and b.max_seqlen == max(lengths, default=0)
    assert [r.tolist() for r in b] == [r.tolist() for r in rows]
    assert b.source.tolist() == list(range(len(rows)))
    rows_of = b.token_rows()
    pos = b.token_positions()
    for t in range(b.num_tokens):  # reference: walk the rows
        r = int(rows_of[t])
        assert b.cu_seqlens[r] + pos[t] == t and 0 <= pos[t] < lengths[r]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", [LENGTHS["odd"], LENGTHS["empty-rows"], LENGTHS["one-row"]],
                         ids=["odd", "empty-rows", "one-row"])
@pytest.mark.parametrize("multiple_of", [None, 8])
def test_padded_round_trip(lengths, side, multiple_of):
    b, rows = _batch(lengths)
    p = b.to_padded(pad_id=3, side=side, multiple_of=multiple_of, pad_value=-1)
    width = max(lengths)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    assert p.input_ids.shape == (len(rows), width) and p.attention_mask.dtype == bool and p.side == side
    for i, r in enumerate(rows):  # reference: one row at a time
        n = len(r)
        want = np.full(width, 3, np.int32)
        vals = np.full(width, -1, np.int32)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        want[sl] = r
        vals[sl] = b.row_values(i)
        np.testing.assert_array_equal(p.input_ids[i], want)
        np.testing.assert_array_equal(p.values[i], vals)
        assert p.attention_mask[i].sum() == n and p.attention_mask[i, sl].all()
    back = p.to_ragged()
    np.testing.assert_array_equal(back.input_ids, b.input_ids)
    np.testing.assert_array_equal(back.cu_seqlens, b.cu_seqlens)
    np.testing.assert_array_equal(back.values, b.values)
    np.testing.assert_array_equal(back.soft_mask, b.soft_mask)


def test_numpy_fallback_matches_core():
    """Dtypes the C++ core does not pad (int64, float) go through the vectorised numpy path."""
    b, rows = _batch(LENGTHS["odd"], fields=False)
    wide = b.replace(input_ids=b.input_ids.astype(np.int64))
    for side in ("right", "left"):
        np.testing.assert_array_equal(wide.to_padded(0, side).input_ids, b.to_padded(0, side).input_ids)
        np.testing.assert_array_equal(wide.to_padded(0, side).attention_mask, b.to_padded(0, side).attention_mask)


def test_fixed_length_and_truncation():
    b, rows = _batch([7, 2, 11])
    p = b.to_padded(0, length=16)
    assert p.input_ids.shape == (3, 16)
    with pytest.raises(ValueError, match="row 2 has 11 tokens, more than the padded length 4"):
        b.to_padded(0, length=4)
    t = b.to_padded(0, length=4, truncate=True)
    np.testing.assert_array_equal(t.input_ids, np.stack([r[:4] if len(r) >= 4 else np.pad(r, (0, 4 - len(r)))
                                                         for r in rows]))
    end = b.truncate(4, keep="end")
    assert [r.tolist() for r in end] == [r[-4:].tolist() for r in rows]
    np.testing.assert_array_equal(end.token_spans[:4], b.token_spans[3:7])  # per-token fields follow
    with pytest.raises(ValueError, match="side must be"):
        b.to_padded(0, side="middle")
    with pytest.raises(ValueError, match="length must be"):
        b.to_padded(0, length=-1)


@pytest.mark.parametrize("key", [slice(1, 4), slice(None, None, 2), [4, 0, 0, 2], np.array([True, False, True, False, True])],
                         ids=["slice", "step", "index-repeat", "bool-mask"])
def test_select_carries_every_field(key):
    b, rows = _batch(LENGTHS["odd"])
    idx = np.arange(len(rows))[key]
    s = b[key]
    assert [r.tolist() for r in s] == [rows[i].tolist() for i in idx]
    assert s.source.tolist() == idx.tolist() and s.names.tolist() == [f"r{i}" for i in idx]
    assert s.obs["label"].tolist() == (idx * 10).tolist()
    for j, i in enumerate(idx):
        a, z = b.cu_seqlens[i], b.cu_seqlens[i + 1]
        np.testing.assert_array_equal(s.row_values(j), b.values[a:z])
        c, d = s.cu_seqlens[j], s.cu_seqlens[j + 1]
        np.testing.assert_array_equal(s.soft_mask[c:d], b.soft_mask[a:z])
        np.testing.assert_array_equal(s.token_spans[c:d], b.token_spans[a:z])
    with pytest.raises(IndexError, match="row 9 out of range"):
        b[[9]]
    with pytest.raises(IndexError, match="out of range"):
        b[5]


def test_concat():
    a, ra = _batch([3, 5], seed=1)
    b, rb = _batch([0, 4, 1], seed=2)
    c = Batch.concat([a, b])
    assert [r.tolist() for r in c] == [r.tolist() for r in ra + rb]
    assert c.source.tolist() == [0, 1, 0, 1, 2]  # each part's own numbering
    np.testing.assert_array_equal(c.values, np.concatenate([a.values, b.values]))
    np.testing.assert_array_equal(c.token_spans, np.concatenate([a.token_spans, b.token_spans]))
    assert c.names.tolist() == ["r0", "r1", "r0", "r1", "r2"]
    plain = Batch.concat([a, Batch.from_rows([[1, 2]])])  # a field some parts lack is dropped
    assert plain.values is None and plain.num_tokens == 10
    empty = Batch.concat([])
    assert len(empty) == 0 and empty.num_tokens == 0


@pytest.mark.parametrize("padded", [False, True], ids=["ragged-budget", "padded-budget"])
@pytest.mark.parametrize("max_tokens,max_rows", [(20, None), (20, 2), (3, None), (1000, 3)])
def test_plan(padded, max_tokens, max_rows):
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 15, 41).tolist()
    b, _ = _batch(lengths, fields=False)
    plan = b.plan(max_tokens, max_rows=max_rows, padded=padded)
    order = plan.order
    assert sorted(order.tolist()) == list(range(len(lengths)))  # every row once
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
    for g in plan.groups:
        ls = [lengths[i] for i in g]
        cost = len(g) * max(ls) if padded else sum(ls)
        assert len(g) == 1 or cost <= max_tokens
        assert max_rows is None or len(g) <= max_rows
    # per-group results back in row order
    got = plan.restore([np.asarray(g) * 2 for g in plan.groups])
    np.testing.assert_array_equal(got, np.arange(len(lengths)) * 2)
    assert np.array_equal(order[plan.inverse], np.arange(len(lengths)))
    for rows, sub in b.batches(max_tokens, max_rows=max_rows, padded=padded):
        assert sub.source.tolist() == rows.tolist()


def test_to_torch_zero_copy_and_back():
    torch = pytest.importorskip("torch")
    b, rows = _batch(LENGTHS["odd"])
    t = b.to_torch()
    assert t.is_torch and t.input_ids.dtype == torch.int32 and t.cu_seqlens.dtype == torch.int32
    assert t.input_ids.data_ptr() == b.input_ids.ctypes.data  # no copy on the CPU
    assert t.lengths.tolist() == b.lengths.tolist() and t.max_seqlen == b.max_seqlen
    back = t.to_numpy()
    np.testing.assert_array_equal(back.input_ids, b.input_ids)
    np.testing.assert_array_equal(back.cu_seqlens, b.cu_seqlens)
    np.testing.assert_array_equal(back.token_spans, b.token_spans)
    assert back.names.tolist() == b.names.tolist()
    tb = Batch(torch.tensor([1, 2, 3]), [0, 1, 3])  # torch ids with a plain cu_seqlens
    assert tb.cu_seqlens.tolist() == [0, 1, 3]


@pytest.mark.parametrize("ids,cu,msg", [
    (np.zeros(3, np.int32), [0, 2], "end at len"),
    (np.zeros(3, np.int32), [1, 3], "start at 0"),
    (np.zeros(3, np.int32), [0, 2, 1, 3], "must not decrease"),
    (np.zeros((3, 1), np.int32), [0, 3], "1-D"),
    (np.zeros(3, np.int32), np.array([0.0, 3.0]), "integers"),
], ids=["short", "start", "decrease", "2d", "float-cu"])
def test_bad_batches(ids, cu, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        Batch(ids, cu)


def test_bad_fields():
    with pytest.raises(ValueError, match=r"values must be \[T\] with T=3"):
        Batch(np.zeros(3, np.int32), [0, 3], values=np.zeros(2))
    with pytest.raises(ValueError, match=r"token_spans must be \[T, 2\]"):
        Batch(np.zeros(3, np.int32), [0, 3], token_spans=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="one entry per row"):
        Batch(np.zeros(3, np.int32), [0, 3], names=["a", "b"])
    with pytest.raises(ValueError, match="one entry per row"):
        Batch(np.zeros(3, np.int32), [0, 3], obs={"x": [1, 2]})


def test_padded_batch_mapping_api():
    p = Batch.from_rows([[4, 5], [6]]).to_padded(0)
    assert p.keys() == ["input_ids", "attention_mask"] and p["input_ids"] is p.input_ids
    with pytest.raises(KeyError):
        p["token_type_ids"]
    assert isinstance(p, PaddedBatch) and len(p) == 2
