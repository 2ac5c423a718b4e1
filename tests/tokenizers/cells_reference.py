"""Pure-numpy references of the single-cell tokenizers, written from the algorithms' definitions
(Geneformer's rank-value encoding, scGPT's binning) on dense rows. They never call omicskern, so
the tests compare two independent implementations. Also: random count matrices with the awkward
cases (empty cells, single-gene cells, all-zero genes, ties, unsorted/duplicate CSR entries)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def dense(X) -> np.ndarray:
    """Dense float64 copy; repeated CSR entries summed (scipy's semantics)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def geneformer_values(x, total, medians, target_sum=10_000):
    """Geneformer's h5ad-path normalisation of one cell, operation for operation as scipy runs
    ``X_view / n_counts * target_sum / norm_factor_vector`` (csr / dense -> ``multiply(1 / dense)``):
    ``((x * (1 / n)) * target_sum) * (1 / median)``, each step in numpy's result dtype. ``x``: the
    cell's nonzero counts in the matrix dtype; ``total``: a 1-element array in n_counts' dtype;
    ``medians``: float64."""
    recip_n = np.true_divide(1.0, np.asarray(total).reshape(1))  # n_counts' float dtype
    t = np.asarray(x) * recip_n                                    # result_type(X, recip)
    t = t * target_sum                                             # python scalar: same dtype
    return t * np.true_divide(1.0, np.asarray(medians, np.float64))


def geneformer_scipy(X, n_counts, medians, target_sum=10_000):
    """Upstream's expression itself, on a scipy CSR ``X`` (cells x dictionary genes, column order)
    and an ``n_counts`` array of its own dtype: the normalised CSR (``X_norm``)."""
    return sp.csr_matrix(X / np.asarray(n_counts)[:, None] * target_sum / np.asarray(medians, np.float64))


def rank_value_ref(X, gene_keys, token_dict, medians, *, totals=None, model_input_size=2048,
                   special=False, keep=None, skip_empty=True, target_sum=10_000.0, arithmetic="geneformer"):
    """Geneformer rank value: returns (list of token arrays, list of input rows).

    Columns whose key is in both dictionaries are genes; columns with the same key are summed
    (Geneformer's sum_ensembl_ids) and sit at their first column for the tie rule. Totals: given
    (their dtype kept), else the sum over ALL columns (float32 for float32 counts, as scipy's
    ``X.sum(axis=1)``). arithmetic="exact": value = count / total * target_sum / median (float64, in
    this order, Geneformer's loom path); "geneformer": :func:`geneformer_values` (the h5ad path).
    Ranked descending, ties by ascending (first) column (a stable argsort); truncated; <cls>/<eos>."""
    D = dense(X)
    n_cells = D.shape[0]
    raw = np.asarray(X.toarray() if sp.issparse(X) else X)
    if totals is None:
        totals = D.sum(axis=1)
        if raw.dtype == np.float32:
            totals = totals.astype(np.float32)  # exact below 2**24
    totals_raw = np.asarray(totals)
    totals = np.asarray(totals, np.float64)
    cols_of: dict = {}
    for j, k in enumerate(gene_keys):
        if k in token_dict and k in medians:
            cols_of.setdefault(k, []).append(j)
    first_col = {k: c[0] for k, c in cols_of.items()}
    genes = list(first_col)
    G = np.zeros((n_cells, len(genes)), raw.dtype if raw.dtype.kind == "f" else np.float64)
    for gi, k in enumerate(genes):
        G[:, gi] = D[:, cols_of[k]].sum(axis=1)
    Graw = raw[:, [cols_of[k][0] for k in genes]] if raw.dtype.kind in "iu" else G
    gcol = np.array([first_col[k] for k in genes], np.int64)
    gtok = np.array([token_dict[k] for k in genes], np.int64)
    gmed = np.array([medians[k] for k in genes], np.float64)
    n_genes = model_input_size - (2 if special else 0)
    out, rows = [], []
    for i in range(n_cells):
        if keep is not None and not keep[i]:
            continue
        nz = np.flatnonzero(G[i])
        if len(nz) == 0 and skip_empty:
            continue
        if arithmetic == "exact":
            v = G[i, nz].astype(np.float64) / totals[i] * target_sum / gmed[nz]
        else:
            dupl = any(len(cols_of[k]) > 1 for k in genes)
            x = G[i, nz] if dupl or raw.dtype.kind == "f" else Graw[i, nz]
            v = geneformer_values(x, totals_raw[i:i + 1], gmed[nz], target_sum)
        order = np.lexsort((gcol[nz], -v))[:n_genes]
        toks = gtok[nz][order]
        if special:
            toks = np.concatenate([[token_dict["<cls>"]], toks, [token_dict["<eos>"]]])
        out.append(toks.astype(np.int64))
        rows.append(i)
    return out, rows


def bin_ref(X, col_token, *, n_bins=51, rand_seed=None, cls_id=None, skip_empty=False, keep=None):
    """scGPT binning of each cell's nonzero values in kept columns (col_token >= 0), column
    order. rand_seed=None: np.digitize; else scGPT's _digitize(side="both") with draws from
    np.random.seed(rand_seed) + np.random.rand(n) per non-empty cell, in cell order. Returns
    (list of token arrays, list of value arrays, list of input rows)."""
    D = dense(X)
    cols = np.flatnonzero(np.asarray(col_token) >= 0)
    D = D[:, cols]
    toks_of = np.asarray(col_token)[cols]
    if rand_seed is not None:
        np.random.seed(rand_seed)
    toks_out, vals_out, rows = [], [], []
    for i in range(D.shape[0]):
        if keep is not None and not keep[i]:
            continue
        row = D[i]
        nz = np.flatnonzero(row)
        if len(nz) == 0:
            if skip_empty:
                continue
            t, v = np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            x = row[nz]
            bins = np.quantile(x, np.linspace(0, 1, n_bins - 1))
            left = np.digitize(x, bins)
            if rand_seed is None:
                digits = left
            else:
                right = np.digitize(x, bins, right=True)
                digits = np.ceil(np.random.rand(len(x)) * (right - left) + left).astype(np.int64)
            assert digits.min() >= 1 and digits.max() <= n_bins - 1
            t, v = toks_of[nz].astype(np.int64), digits.astype(np.int64)
        if cls_id is not None:
            t = np.concatenate([[cls_id], t])
            v = np.concatenate([[0], v])
        toks_out.append(t)
        vals_out.append(v)
        rows.append(i)
    return toks_out, vals_out, rows


def random_counts(seed: int, n_cells: int = 60, n_genes: int = 40, *, density: float = 0.3, dtype=np.float32,
                  tie_values: bool = False, unsorted: bool = False, duplicates: bool = False,
                  explicit_zeros: bool = False, max_count: int = 30) -> sp.csr_matrix:
    """Counts with empty cells (rows 0 and 5), single-gene cells (rows 1 and 6), all-zero genes
    (columns 0 and 3), optional ties (few distinct values), unsorted indices, repeated entries and
    explicitly stored zeros."""
    rng = np.random.default_rng(seed)
    M = rng.random((n_cells, n_genes)) < density
    if tie_values:
        vals = rng.choice([1, 2, 3], size=(n_cells, n_genes))
    else:
        vals = rng.negative_binomial(2, 0.25, size=(n_cells, n_genes)) + 1
        vals = np.minimum(vals, max_count)
    A = np.where(M, vals, 0).astype(np.float64)
    A[:, [0, 3]] = 0
    if n_cells > 6:
        A[[0, 5]] = 0
        for r in (1, 6):
            A[r] = 0
            A[r, (r * 7) % (n_genes - 4) + 4] = 5
    X = sp.csr_matrix(A)
    indptr, indices, data = X.indptr.copy(), X.indices.copy(), X.data.copy()
    if duplicates or explicit_zeros:
        rows_i, cols_i, vals_i = [], [], []
        for i in range(n_cells):
            s, e = indptr[i], indptr[i + 1]
            c, v = list(indices[s:e]), list(data[s:e])
            if duplicates and len(c) >= 2:
                # split the first stored value into two entries of the same column
                if v[0] >= 2:
                    half = np.floor(v[0] / 2)
                    v[0] -= half
                    c.append(c[0])
                    v.append(half)
            if explicit_zeros and i % 3 == 0:
                free = sorted(set(range(n_genes)) - set(c))
                if free:
                    c.append(free[len(free) // 2])
                    v.append(0.0)
            rows_i.append(len(c))
            cols_i += c
            vals_i += v
        indptr = np.concatenate([[0], np.cumsum(rows_i)])
        indices = np.array(cols_i)
        data = np.array(vals_i)
    if unsorted or duplicates or explicit_zeros:
        for i in range(n_cells):
            s, e = indptr[i], indptr[i + 1]
            p = rng.permutation(e - s)
            indices[s:e] = indices[s:e][p]
            data[s:e] = data[s:e][p]
    out = sp.csr_matrix((data.astype(dtype), indices.astype(np.int32), indptr.astype(np.int32)),
                        shape=(n_cells, n_genes))
    out.has_sorted_indices = False  # keep scipy from assuming canonical order
    return out
