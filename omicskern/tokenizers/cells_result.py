"""Results of the single-cell tokenizers: ragged token ids (+ bin values), padded views, writers.

A :class:`CellTokens` holds every tokenized cell back to back (``input_ids[offsets[i]:offsets[i+1]]``
is cell ``i``), the input row each came from, carried obs columns and a :class:`TokenizeReport`.
Writers: ``.npz`` (numpy), parquet (needs ``pyarrow``), a Hugging Face ``datasets`` folder with
``input_ids`` and ``length`` columns as Geneformer's pipelines read (needs ``datasets``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np


@dataclass
class TokenizeReport:
    """What a tokenizer run did: cells in/out and why some were skipped, how genes matched."""

    method: str = ""
    n_cells: int = 0                 # rows in the input
    n_tokenized: int = 0             # rows in the output
    n_filtered: int = 0              # dropped by the filter column (e.g. filter_pass != 1)
    n_empty: int = 0                 # dropped: no nonzero gene of the dictionary / vocabulary
    n_genes: int = 0                 # columns in the input
    n_genes_matched: int = 0         # columns mapped to a token
    n_genes_missing: int = 0         # columns without a token (dropped)
    n_genes_excluded: int = 0        # columns in the vocabulary but left out by a gene subset
    n_duplicate_columns: int = 0     # matched columns sharing their gene with an earlier column (summed)
    n_symbol_mapped: int = 0         # columns whose key went through the symbol -> Ensembl table
    n_non_integer_cells: int = 0     # cells holding a non-integer float count
    total_counts_source: str = ""    # obs column name or "sum over all genes"
    filter_source: str = ""          # obs column used to filter, or "" when none
    missing_examples: list = field(default_factory=list)  # a few gene keys without a token

    def merge(self, other: "TokenizeReport") -> None:
        """Adds another chunk's cell counts (gene counts are per input, not per chunk)."""
        self.n_cells += other.n_cells
        self.n_tokenized += other.n_tokenized
        self.n_filtered += other.n_filtered
        self.n_empty += other.n_empty
        self.n_non_integer_cells += other.n_non_integer_cells

    def summary(self) -> str:
        lines = [
            f"{self.method}: {self.n_tokenized:,} of {self.n_cells:,} cells tokenized",
            f"  skipped: {self.n_filtered:,} by filter"
            + (f" ({self.filter_source})" if self.filter_source else "")
            + f", {self.n_empty:,} with no gene in the dictionary",
            f"  genes: {self.n_genes_matched:,} of {self.n_genes:,} matched, {self.n_genes_missing:,} missing"
            + (f", {self.n_genes_excluded:,} outside the gene subset" if self.n_genes_excluded else "")
            + (f", {self.n_duplicate_columns:,} duplicate columns summed" if self.n_duplicate_columns else "")
            + (f", {self.n_symbol_mapped:,} mapped through the symbol table" if self.n_symbol_mapped else ""),
        ]
        if self.total_counts_source:
            lines.append(f"  total counts: {self.total_counts_source}")
        if self.missing_examples:
            lines.append("  missing genes, e.g.: " + ", ".join(map(str, self.missing_examples)))
        if self.n_non_integer_cells:
            lines.append(f"  warning: {self.n_non_integer_cells:,} cells hold non-integer counts")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CellTokens:
    """Tokenized cells, ragged.

    ``input_ids`` int32 [T]: every cell's tokens back to back; cell ``i`` is
    ``input_ids[offsets[i]:offsets[i + 1]]``. ``offsets`` int64 [N + 1]. ``values`` int32 [T]:
    the bin of each token (binned-value tokenizer; ``None`` for rank value). ``obs_index`` int64 [N]:
    the input row of each output cell. ``obs_names`` [N] (when the input had names) and ``obs``
    (carried obs columns, each [N]).

    Example:
        >>> out = tok.tokenize(adata)
        >>> out[0], out.lengths, out.to_padded(pad_id=0)["attention_mask"].shape
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    values: np.ndarray | None = None
    obs_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    obs_names: np.ndarray | None = None
    obs: dict = field(default_factory=dict)
    report: TokenizeReport = field(default_factory=TokenizeReport)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"cell index {i} out of range for {n} tokenized cells")
        i %= n
        return self.input_ids[self.offsets[i]:self.offsets[i + 1]]

    def values_of(self, i: int) -> np.ndarray:
        if self.values is None:
            raise ValueError("these tokens carry no values (rank-value encoding)")
        n = len(self)
        i %= max(n, 1)
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N] tokens per cell."""
        return np.diff(self.offsets)

    def to_padded(self, *, pad_id: int = 0, pad_value: int = 0, max_len: int | None = None,
                  dtype=np.int64) -> dict:
        """Right-padded arrays: ``input_ids`` [N, L], ``attention_mask`` [N, L] (1 = token),
        and ``values`` [N, L] when present. ``L`` = ``max_len`` or the longest cell; longer cells
        are cut at ``L`` (rank value: the lowest-ranked genes go; sample with the tokenizer's
        ``max_len`` for scGPT-style random subsets)."""
        n = len(self)
        lengths = self.lengths
        width = int(lengths.max()) if n else 0
        if max_len is not None:
            width = min(width, int(max_len)) if n else int(max_len)
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        pos = np.arange(len(self.input_ids), dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        keep = pos < width
        row, pos = row[keep], pos[keep]
        ids = np.full((n, width), pad_id, dtype=dtype)
        ids[row, pos] = self.input_ids[keep]
        mask = np.zeros((n, width), dtype=np.int8)
        mask[row, pos] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.values is not None:
            vals = np.full((n, width), pad_value, dtype=self.values.dtype)
            vals[row, pos] = self.values[keep]
            out["values"] = vals
        return out

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def concat(cls, parts: Sequence["CellTokens"], report: TokenizeReport | None = None) -> "CellTokens":
        """Joins chunk results in order. Each part's arrays are released as soon as they are
        copied (a list passed in is emptied in place), so the peak stays near the output size
        plus one chunk."""
        if not isinstance(parts, list):
            parts = list(parts)
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), report=report or TokenizeReport())
        n_tok = sum(len(p.input_ids) for p in parts)
        n_cells = sum(len(p) for p in parts)
        has_values = parts[0].values is not None
        ids = np.empty(n_tok, np.int32)
        vals = np.empty(n_tok, np.int32) if has_values else None
        offsets = np.empty(n_cells + 1, np.int64)
        offsets[0] = 0
        obs_index = np.empty(n_cells, np.int64)
        names = [] if parts[0].obs_names is not None else None
        obs = {k: [] for k in parts[0].obs}
        t = c = 0
        for k in range(len(parts)):
            p = parts[k]
            m, nc = len(p.input_ids), len(p)
            ids[t:t + m] = p.input_ids
            if has_values:
                vals[t:t + m] = p.values
            offsets[c + 1:c + nc + 1] = p.offsets[1:] + t
            obs_index[c:c + nc] = p.obs_index
            if names is not None:
                names.append(p.obs_names)
            for key in obs:
                obs[key].append(p.obs[key])
            t += m
            c += nc
            parts[k] = None  # free the chunk now
        return cls(ids, offsets, vals, obs_index,
                   np.concatenate(names) if names is not None and names else names,
                   {k: np.concatenate(v) for k, v in obs.items()}, report or TokenizeReport())

    # ---- writers ----------------------------------------------------------------------------
    def save_npz(self, path: str | os.PathLike) -> None:
        """``input_ids``, ``offsets``, ``length``, ``obs_index`` (+ ``values``, ``obs_names``,
        ``obs/<column>``) in one uncompressed ``.npz``; :meth:`load_npz` reads it back."""
        arrays = {"input_ids": self.input_ids, "offsets": self.offsets, "length": self.lengths,
                  "obs_index": self.obs_index}
        if self.values is not None:
            arrays["values"] = self.values
        if self.obs_names is not None:
            arrays["obs_names"] = np.asarray(self.obs_names).astype(str)
        for k, v in self.obs.items():
            arrays[f"obs/{k}"] = _plain(v)
        np.savez(path, **arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "CellTokens":
        with np.load(path, allow_pickle=False) as z:
            obs = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
            return cls(z["input_ids"], z["offsets"], z["values"] if "values" in z.files else None,
                       z["obs_index"], z["obs_names"] if "obs_names" in z.files else None, obs)

    def to_arrow(self):
        """A ``pyarrow.Table``: ``input_ids`` list<int32>, ``length`` int64 (+ ``values``,
        ``obs_names``, obs columns). Built from the flat arrays without per-cell Python."""
        pa = _require("pyarrow", "parquet / datasets output")
        offs = pa.array(self.offsets.astype(np.int64))
        cols = {"input_ids": pa.LargeListArray.from_arrays(offs, pa.array(self.input_ids)),
                "length": pa.array(self.lengths)}
        if self.values is not None:
            cols["values"] = pa.LargeListArray.from_arrays(offs, pa.array(self.values))
        if self.obs_names is not None:
            cols["obs_names"] = pa.array(np.asarray(self.obs_names).astype(str))
        for k, v in self.obs.items():
            cols[k] = pa.array(_plain(v))
        return pa.table(cols)

    def save_parquet(self, path: str | os.PathLike) -> None:
        """One row per cell (needs ``pyarrow``)."""
        pq = _require("pyarrow.parquet", "parquet output")
        pq.write_table(self.to_arrow(), str(path))

    def save_dataset(self, path: str | os.PathLike) -> None:
        """A Hugging Face ``datasets`` folder (``Dataset.save_to_disk``) with ``input_ids`` and
        ``length`` columns (+ ``values`` and obs columns), as Geneformer's pipelines read."""
        datasets = _require("datasets", "Hugging Face dataset output")
        pa = _require("pyarrow", "Hugging Face dataset output")
        table = self.to_arrow()
        # datasets' default Sequence feature is a list<int>, not a large_list
        fields = []
        for f in table.schema:
            t = pa.list_(f.type.value_type) if pa.types.is_large_list(f.type) else f.type
            fields.append(pa.field(f.name, t))
        table = table.cast(pa.schema(fields))
        datasets.Dataset(table).save_to_disk(str(path))

    def save(self, path: str | os.PathLike, fmt: str | None = None) -> str:
        """Writes by format: ``npz``, ``parquet`` or ``dataset`` (default: from the suffix;
        ``.npz``, ``.parquet``, else a ``datasets`` folder). Returns the format used."""
        fmt = fmt or infer_format(path)
        if fmt == "npz":
            self.save_npz(path)
        elif fmt == "parquet":
            self.save_parquet(path)
        elif fmt == "dataset":
            self.save_dataset(path)
        else:
            raise ValueError(f"unknown output format {fmt!r} (use npz, parquet or dataset)")
        return fmt


def infer_format(path: str | os.PathLike) -> str:
    s = str(path).lower()
    if s.endswith(".npz"):
        return "npz"
    if s.endswith(".parquet") or s.endswith(".pq"):
        return "parquet"
    return "dataset"


def _plain(v) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == object or a.dtype.kind == "U":
        return a.astype(str)
    return a


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = module.split(".")[0]
        raise ImportError(f"{what} needs the optional package '{pkg}': pip install {pkg}") from e


def concat_reports(reports: Iterable[TokenizeReport]) -> TokenizeReport:
    reports = list(reports)
    out = dataclasses.replace(reports[0]) if reports else TokenizeReport()
    for r in reports[1:]:
        out.merge(r)
    return out
