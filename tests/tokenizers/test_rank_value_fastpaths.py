"""Edge cases of the fast paths of the C++ rank-value encoder (csrc/cells/rank.cpp):

- pass 1 sums a row with four accumulators only when the sum is provably exact (whole counts,
  total below 2^53, strictly increasing columns, no duplicate gene IDs) and otherwise redoes the
  row with the sequential loop: the total must equal a sequential float64 sum bit for bit;
- the ranking sorts packed 24-bit keys (highest varying bits of the value) and finishes runs of
  equal keys with the exact comparator: values that differ only in their lowest bits, many exact
  ties in shuffled storage order, runs that straddle the model_input_size cut, constant cells.
Everything is compared with the numpy reference of cells_reference.py or with plain Python."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from omicskern._C import cells_rank_value
from omicskern.tokenizers import RankValueTokenizer

from .cells_reference import rank_value_ref

SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


def _raw_totals(X, col_slot=None):
    """The C++ totals (sum over all stored values of each row) from the low-level binding."""
    X = X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X)
    n_cols = X.shape[1]
    if col_slot is None:
        col_slot = np.arange(n_cols, dtype=np.int32)
    n_slots = int(col_slot.max()) + 1
    r = cells_rank_value(X.indptr, X.indices, X.data, n_cols, np.ascontiguousarray(col_slot, np.int32),
                         np.arange(n_slots, dtype=np.int32) + 4, np.ones(n_slots), None, None, 0, 2048,
                         -1, -1, 10_000.0, False, None, 1)
    return r["totals"], r["non_integer"]


def _sequential_sums(X):
    out = []
    for i in range(X.shape[0]):
        t = 0.0  # Python floats are IEEE doubles: left-to-right, each addition rounded
        for x in X.data[X.indptr[i]:X.indptr[i + 1]]:
            t += float(x)
        out.append(t)
    return np.array(out)


def _csr(rows, n_cols, dtype):
    indptr, indices, data = [0], [], []
    for r in rows:
        for c, x in r:
            indices.append(c)
            data.append(x)
        indptr.append(len(indices))
    return sp.csr_matrix((np.array(data, dtype=dtype), np.array(indices, np.int32), np.array(indptr, np.int64)),
                         shape=(len(rows), n_cols))


def _four_lane_sum(xs):
    """What an unconditional 4-accumulator sum would give (the fast path's order)."""
    acc = [0.0] * 4
    q = 0
    while q + 4 <= len(xs):
        for lane in range(4):
            acc[lane] += float(xs[q + lane])
        q += 4
    for x in xs[q:]:
        acc[0] += float(x)
    return (acc[0] + acc[1]) + (acc[2] + acc[3])


def _order_sensitive_rows(dtype, seed=0, n_cols=64):
    """Rows whose 4-lane sum differs from the sequential sum (so only the fallback is right):
    fractional counts (float types) and whole counts whose partial sums pass 2^53."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(400):
        cols = np.sort(rng.choice(n_cols, size=int(rng.integers(5, 40)), replace=False))
        if dtype != np.int64 and len(rows) % 2 == 0:
            vals = rng.choice([0.1, 0.3, 0.7, 1e7 + 0.5, 3.3], size=len(cols))
        else:
            vals = rng.choice([1.0, 3.0, 7.0, 2.0 ** 53, 2.0 ** 55 + 2.0 ** 33], size=len(cols))
        vals = np.asarray(vals, dtype).astype(np.float64)
        if _four_lane_sum(vals) != sum_seq(vals):
            rows.append(list(zip(cols.tolist(), vals.tolist())))
        if len(rows) >= 6:
            break
    assert len(rows) >= 6  # the test needs rows where the summation order shows
    return rows


def sum_seq(xs):
    t = 0.0  # left to right, each addition rounded
    for x in xs:
        t += float(x)
    return t


@pytest.mark.parametrize("dtype", [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32"),
                                   pytest.param(np.int64, id="i64"), pytest.param(np.int32, id="i32")])
def test_totals_equal_the_sequential_sum_bit_for_bit(dtype):
    # the integer fast path takes whole counts in [0, 2^31); the rest goes the sequential way
    n_cols = 64
    rows = [
        [(c, 1 + c % 7) for c in range(0, n_cols, 2)],  # whole counts, small total: fast path
        [(c, 2 ** 31 - 1) for c in range(0, 60, 3)],     # largest fast-path count
        [],                                               # empty row
        [(7, 1)],                                         # one entry
    ]
    if dtype != np.int32:
        rows += [[(c, 2 ** 53 - 1) for c in range(3)],  # total crosses 2^53
                 [(1, 5), (2, 2 ** 31), (4, 3)]]         # a count of 2^31: slow path
    if dtype in (np.float32, np.float64):
        rows += [[(0, -0.0), (3, 2.0)], [(0, 2.0), (5, -0.0)], [(2, 2.5), (3, 1.0)]]
    if dtype != np.int32:
        rows += _order_sensitive_rows(dtype)
    X = _csr(rows, n_cols, dtype)
    totals, non_int = _raw_totals(X)
    np.testing.assert_array_equal(totals, _sequential_sums(X))
    expect_non_int = [any(float(x) != np.floor(float(x)) for x in X.data[X.indptr[i]:X.indptr[i + 1]])
                      for i in range(X.shape[0])]
    np.testing.assert_array_equal(non_int.astype(bool), expect_non_int)


def test_totals_with_unsorted_repeated_columns_and_duplicate_genes():
    # the fast path needs strictly increasing columns and one column per gene; otherwise the
    # sequential loop runs (the sums still follow storage order)
    X = _csr([[(5, 0.7), (2, 0.1), (9, 0.2)], [(3, 0.1), (3, 0.2), (4, 0.3)], [(1, 2.0), (2, 5.0)]], 12, np.float64)
    np.testing.assert_array_equal(_raw_totals(X)[0], _sequential_sums(X))
    slot = np.arange(12, dtype=np.int32)
    slot[2] = 1  # columns 1 and 2 are the same gene
    np.testing.assert_array_equal(_raw_totals(X, slot)[0], _sequential_sums(X))


def _tokenizer_case(medians, counts, size, preset="V1", shuffle_seed=None):
    n = len(medians)
    keys = [f"G{j}" for j in range(n)]
    tok = dict(SPECIALS)
    med = {}
    for j, k in enumerate(keys):
        tok[k] = len(tok)
        med[k] = float(medians[j])
    X = sp.csr_matrix(np.asarray(counts, np.float64))
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        for i in range(X.shape[0]):
            s, e = X.indptr[i], X.indptr[i + 1]
            p = rng.permutation(e - s)
            X.indices[s:e] = X.indices[s:e][p]
            X.data[s:e] = X.data[s:e][p]
        X.has_sorted_indices = False
    out = RankValueTokenizer(tok, med, preset=preset, model_input_size=size, gene_column=None,
                             num_threads=1).tokenize(X, gene_ids=keys)
    ref, rows = rank_value_ref(X, keys, tok, med, model_input_size=size, special=preset == "V2")
    assert len(out) == len(ref)
    np.testing.assert_array_equal(out.source, rows)
    for i, r in enumerate(ref):
        np.testing.assert_array_equal(out[i], r, err_msg=f"cell {i}")


@pytest.mark.parametrize("shuffle", [pytest.param(None, id="sorted"), pytest.param(3, id="shuffled")])
def test_values_differing_in_the_lowest_bits_collide_in_the_key(shuffle):
    # 400 genes: groups of values 1, 2, 3 ... ulps apart (same 24-bit key) spread over decades,
    # so every key run needs the exact comparator; counts 1 keep the medians' order
    rng = np.random.default_rng(1)
    n = 400
    centers = rng.choice([1e-3, 0.37, 1.0, 5.5, 2e4], size=n)
    steps = rng.integers(-3, 4, size=n)
    medians = np.array([np.nextafter(c, np.inf) if s == 0 else c + s * np.spacing(c) for c, s in zip(centers, steps)])
    counts = np.ones((3, n))
    counts[1, ::3] = 0
    counts[2] = rng.integers(1, 3, size=n)
    for size in (4096, 150, 17):  # whole cell; cut inside the runs
        _tokenizer_case(medians, counts, size, shuffle_seed=shuffle)


@pytest.mark.parametrize("size", [4096, 100, 99])
def test_many_exact_ties_shuffled_and_cut(size):
    # 3 distinct values over 300 genes, stored in shuffled order: runs of ~100 exact ties must
    # come out by ascending column, and the cut at model_input_size falls inside a run
    n = 300
    medians = np.ones(n)
    counts = np.tile(np.array([1.0, 2.0, 4.0]), (2, n // 3))
    counts[1, 5::7] = 0
    _tokenizer_case(medians, counts, size, shuffle_seed=7)
    _tokenizer_case(medians, counts, size + 2 if size < 4096 else size, preset="V2", shuffle_seed=8)


def test_constant_cells_and_cells_just_past_the_small_path():
    # all values equal (bit range 0: every radix pass skipped), and 97..130 genes per cell
    # (the packed-key path starts above 96 genes)
    for n in (97, 98, 130):
        _tokenizer_case(np.ones(n), np.ones((2, n)), 4096)
        rng = np.random.default_rng(n)
        _tokenizer_case(rng.lognormal(0, 1, n), rng.integers(0, 5, size=(4, n)), 64, shuffle_seed=n)


def test_longer_than_model_input_size_wide_range():
    # 3000 genes with values over ~30 decades (one far outlier crowds the others into few keys)
    rng = np.random.default_rng(11)
    n = 3000
    medians = rng.lognormal(0, 1, n)
    medians[17] = 1e-30
    medians[18] = 1e30
    counts = rng.integers(0, 6, size=(3, n)).astype(np.float64)
    counts[:, 17:19] = 1
    for size in (2048, 4096, 513):
        _tokenizer_case(medians, counts, size, shuffle_seed=None)
