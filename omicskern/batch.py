"""The one batch type of omicskern: every tokenizer produces a :class:`Batch`, every model, op
wrapper and pipeline consumes one.

A batch is ragged: the rows (sequences, windows or cells) lie back to back in one flat token array
and ``cu_seqlens`` marks where each row starts. This is the variable-length layout of the attention
kernels, so no FLOP or byte goes to padding; :meth:`Batch.to_padded` gives the ``[N, L]`` form for
models that need it, and :meth:`PaddedBatch.to_ragged` goes back. Both conversions are vectorised
(no Python loop over rows). This module needs numpy only; torch is imported by :meth:`Batch.to_torch`.

Names, once for all layers:

- ``input_ids``: token ids, int32 ``[T]`` (T = tokens of all rows);
- ``cu_seqlens``: int64 ``[N + 1]``, row ``i`` is ``input_ids[cu_seqlens[i]:cu_seqlens[i + 1]]``
  (``offsets`` is *not* used for this: Hugging Face uses that word for character spans);
- ``values``: optional per-token values ``[T]`` (scGPT expression bins);
- ``soft_mask``: optional bool ``[T]``, True where the token came from lower-case bases;
- ``token_spans``: optional int64 ``[T, 2]``, the ``[start, end)`` of each token in its source
  sequence (special tokens get ``[p, p)`` at the position they sit at);
- ``source``: int64 ``[N]``, the index of each row's source (input sequence, window or cell);
- ``names``: optional ``[N]`` row names (FASTA records, ``obs_names``); ``obs``: optional per-row
  columns carried along (cell metadata); ``report``: what the producer did (cell tokenizers).

Example:
    >>> import numpy as np
    >>> from omicskern.batch import Batch
    >>> b = Batch.from_rows([[5, 6, 7], [8], [9, 10]])
    >>> b.lengths.tolist(), b[2].tolist()
    ([3, 1, 2], [9, 10])
    >>> p = b.to_padded(pad_id=0)
    >>> p.input_ids.tolist()
    [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    >>> p.to_ragged().input_ids.tolist()
    [5, 6, 7, 8, 9, 10]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np

__all__ = ["Batch", "PaddedBatch", "BatchPlan"]

_PER_TOKEN = ("input_ids", "values", "soft_mask", "token_spans")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _np(x) -> np.ndarray:
    """numpy view of an array-like (a CPU tensor without a copy)."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _torch_bool(t):
    """``torch.bool`` (imported only for a tensor that is already there)."""
    import torch

    return torch.bool


def _int_row(r, dtype, i: int) -> np.ndarray:
    """Row ``i`` of :meth:`Batch.from_rows` as ``dtype`` ids: integers only (4.5 raises instead of
    becoming 4) and values that fit ``dtype`` (no wrap-around)."""
    a = np.asarray(r).reshape(-1)
    if a.size == 0:
        return a.astype(dtype)
    if a.dtype.kind not in "iu":
        raise TypeError(f"row {i}: token ids must be integers, got dtype {a.dtype} (e.g. {a.ravel()[0]!r}); "
                        "a float id is not rounded or truncated")
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise ValueError(f"row {i}: token id {bad} does not fit {dt} ({info.min}..{info.max})")
    return a.astype(dt, copy=False)


@dataclass(frozen=True, eq=False)
class Batch:
    """A ragged batch of token rows. See the module docstring for the fields.

    Construct it with :meth:`from_rows`, :meth:`from_lengths` or directly from arrays; every
    tokenizer returns one (``encode_batch(..., padding=False)``, cell ``tokenize``). Arrays are
    numpy (``torch.from_numpy`` takes them without a copy); :meth:`to_torch` gives the same batch
    as tensors, which models accept as well.

    Example:
        >>> b = Batch.from_rows([[1, 2], [3, 4, 5]])
        >>> len(b), b.num_tokens, b.max_seqlen
        (2, 5, 3)
        >>> b[1:].input_ids.tolist(), b[1:].source.tolist()
        ([3, 4, 5], [1])
    """

    input_ids: Any
    cu_seqlens: Any
    values: Any = None
    soft_mask: Any = None
    token_spans: Any = None
    source: Any = None
    names: Any = None
    obs: dict = field(default_factory=dict)
    report: Any = None

    def __post_init__(self):
        ids, cu = self.input_ids, self.cu_seqlens
        if _is_torch(ids):
            if not _is_torch(cu):
                import torch

                cu = torch.as_tensor(np.asarray(cu, dtype=np.int64), device=ids.device)
                object.__setattr__(self, "cu_seqlens", cu)
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == _torch_bool(ids):
                raise TypeError(f"input_ids must hold integer token ids, got {ids.dtype} (a float id is not "
                                "rounded or truncated; convert deliberately, e.g. ids.long())")
            if ids.dim() != 1 or cu.dim() != 1 or cu.numel() < 1:
                raise ValueError(f"input_ids must be [T] and cu_seqlens [N+1], got shapes {tuple(ids.shape)} "
                                 f"and {tuple(cu.shape)}")
            if self.source is None:
                import torch
                object.__setattr__(self, "source", torch.arange(cu.numel() - 1, device=cu.device))
            return
        ids = np.asarray(ids)
        cu = np.asarray(cu)
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be 1-D [T], got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            if ids.size:
                raise TypeError(f"input_ids must hold integer token ids, got dtype {ids.dtype} (a float id is "
                                "not rounded or truncated; convert deliberately, e.g. ids.astype(np.int32))")
            ids = ids.astype(np.int32)  # an empty list / np.zeros(0): no ids to lose
        if cu.ndim != 1 or cu.size < 1:
            raise ValueError(f"cu_seqlens must be 1-D [N + 1], got shape {cu.shape}")
        if cu.dtype.kind not in "iu":
            raise TypeError(f"cu_seqlens must hold integers, got dtype {cu.dtype}")
        if cu.dtype != np.int64:
            cu = cu.astype(np.int64)
        if cu[0] != 0 or cu[-1] != ids.size:
            raise ValueError(f"cu_seqlens must start at 0 and end at len(input_ids)={ids.size}, "
                             f"got {int(cu[0])}..{int(cu[-1])}")
        d = np.diff(cu)
        if d.size and d.min() < 0:
            i = int(np.flatnonzero(d < 0)[0])
            raise ValueError(f"cu_seqlens must not decrease: cu_seqlens[{i}]={int(cu[i])} > "
                             f"cu_seqlens[{i + 1}]={int(cu[i + 1])}")
        object.__setattr__(self, "input_ids", ids)
        object.__setattr__(self, "cu_seqlens", cu)
        n, t = cu.size - 1, ids.size
        for name in ("values", "soft_mask", "token_spans"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v)
            if v.shape[:1] != (t,) or (name == "token_spans" and v.shape != (t, 2)):
                want = "[T, 2]" if name == "token_spans" else "[T]"
                raise ValueError(f"{name} must be {want} with T={t} tokens, got shape {v.shape}")
            object.__setattr__(self, name, v)
        src = np.arange(n, dtype=np.int64) if self.source is None else np.asarray(self.source, dtype=np.int64)
        if src.shape != (n,):
            raise ValueError(f"source must be [N] with N={n} rows, got shape {src.shape}")
        object.__setattr__(self, "source", src)
        if self.names is not None and len(self.names) != n:
            raise ValueError(f"names must have one entry per row ({n}), got {len(self.names)}")
        for k, v in self.obs.items():
            if len(v) != n:
                raise ValueError(f"obs column {k!r} must have one entry per row ({n}), got {len(v)}")

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_lengths(cls, input_ids, lengths, **fields) -> "Batch":
        """Rows of the given lengths, back to back in ``input_ids``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        cu = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        return cls(input_ids, cu, **fields)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], *, values: Sequence[Sequence] | None = None,
                  dtype=np.int32) -> "Batch":
        """A batch from a list of id rows (and optionally a list of value rows)."""
        rows = [_int_row(r, dtype, i) for i, r in enumerate(rows)]
        ids = np.concatenate(rows) if rows else np.zeros(0, dtype)
        vals = None
        if values is not None:
            vrows = [np.asarray(v).reshape(-1) for v in values]
            vals = np.concatenate(vrows) if vrows else np.zeros(0)
        return cls.from_lengths(ids, [len(r) for r in rows], values=vals)

    # -- rows ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def num_rows(self) -> int:
        return len(self)

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def lengths(self):
        """``[N]`` tokens per row (numpy int64, or a tensor for a torch batch)."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    @property
    def max_seqlen(self) -> int:
        return int(self.lengths.max()) if len(self) else 0

    @property
    def is_torch(self) -> bool:
        return _is_torch(self.input_ids)

    def __getitem__(self, key):
        """``batch[i]``: the ids of row ``i``; ``batch[a:b]``, ``batch[index_array]`` or a bool
        mask: a new :class:`Batch` with those rows (all per-token and per-row fields follow)."""
        n = len(self)
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"row {key} out of range for a batch of {n}")
            key = int(key) % n
            return self.input_ids[int(self.cu_seqlens[key]):int(self.cu_seqlens[key + 1])]
        return self.select(key)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))

    def row_values(self, i: int):
        """The ``values`` of row ``i``."""
        if self.values is None:
            raise ValueError("this batch carries no per-token values")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a batch of {n}")
        i %= n
        return self.values[int(self.cu_seqlens[i]):int(self.cu_seqlens[i + 1])]

    def token_rows(self):
        """int64 ``[T]``: the row of every token."""
        return np.repeat(np.arange(len(self), dtype=np.int64), _np(self.lengths))

    def token_positions(self):
        """int64 ``[T]``: the position of every token inside its row (0..len-1)."""
        cu = _np(self.cu_seqlens)
        return np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], np.diff(cu))

    def select(self, rows) -> "Batch":
        """The rows ``rows`` (slice, int array or bool mask) in that order, as a new batch."""
        n = len(self)
        if self.is_torch:
            raise TypeError("select works on numpy batches; select before to_torch()")
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:  # contiguous: views, no copy
                a, b = int(self.cu_seqlens[start]), int(self.cu_seqlens[max(stop, start)])
                return self._replace_rows(slice(a, b), slice(start, max(stop, start)),
                                          self.cu_seqlens[start:max(stop, start) + 1] - a)
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"a bool row mask must have shape ({n},), got {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            bad = rows[(rows < -n) | (rows >= n)][0]
            raise IndexError(f"row {int(bad)} out of range for a batch of {n}")
        rows = rows % max(n, 1)
        lengths = np.diff(self.cu_seqlens)[rows]
        cu = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        starts = self.cu_seqlens[:-1][rows]
        # flat token index of every output token: start of its row + position inside it
        tok = np.repeat(starts - cu[:-1], lengths) + np.arange(cu[-1], dtype=np.int64)
        return self._replace_rows(tok, rows, cu)

    def _replace_rows(self, tok, rows, cu) -> "Batch":
        kw = {k: (None if getattr(self, k) is None else getattr(self, k)[tok]) for k in _PER_TOKEN}
        names = None
        if self.names is not None:
            names = np.asarray(self.names)[rows] if not isinstance(rows, slice) else self.names[rows]
        obs = {k: np.asarray(v)[rows] for k, v in self.obs.items()}
        return Batch(kw["input_ids"], cu, values=kw["values"], soft_mask=kw["soft_mask"],
                     token_spans=kw["token_spans"], source=self.source[rows], names=names, obs=obs,
                     report=self.report)

    def replace(self, **changes) -> "Batch":
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -- padding ---------------------------------------------------------------------------------
    def to_padded(self, pad_id: int = 0, side: Literal["right", "left"] = "right",
                  length: int | Literal["longest"] = "longest", multiple_of: int | None = None, *,
                  pad_value=0, truncate: bool = False, num_threads: int = 0) -> "PaddedBatch":
        """``[N, L]`` arrays: ids (filled with ``pad_id``), a bool mask (True = real token), and
        ``values``/``soft_mask`` when present.

        Args:
            side: where the padding goes.
            length: ``"longest"`` (the longest row) or a fixed ``L``.
            multiple_of: round ``L`` up to a multiple of this (tensor-core friendly shapes).
            pad_value: what padded ``values`` hold.
            truncate: cut rows longer than ``L`` (keeping their start) instead of raising.
        """
        if self.is_torch:
            raise TypeError("to_padded works on numpy batches; pad before to_torch()")
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        n = len(self)
        lengths = np.diff(self.cu_seqlens)
        longest = int(lengths.max()) if n else 0
        if length == "longest" or length is None:
            width = longest
        elif isinstance(length, (int, np.integer)) and length >= 0:
            width = int(length)
        else:
            raise ValueError(f"length must be 'longest' or an int >= 0, got {length!r}")
        if multiple_of is not None:
            if multiple_of < 1:
                raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
            width = -(-width // multiple_of) * multiple_of
        src = self
        if longest > width:
            if not truncate:
                i = int(np.argmax(lengths))
                raise ValueError(f"row {i} has {longest} tokens, more than the padded length {width} "
                                 "(enable truncation or pass a larger length)")
            src = self.truncate(width)
        left = side == "left"
        ids, mask = _pad(src.input_ids, src.cu_seqlens, pad_id, width, left, num_threads)
        vals = soft = None
        if src.values is not None:
            vals, _ = _pad(src.values, src.cu_seqlens, pad_value, width, left, num_threads)
        if src.soft_mask is not None:
            soft, _ = _pad(src.soft_mask.view(np.uint8), src.cu_seqlens, 0, width, left, num_threads)
            soft = soft.view(bool)
        return PaddedBatch(ids, mask, vals, soft, side=side)

    def truncate(self, max_length: int, *, keep: Literal["start", "end"] = "start") -> "Batch":
        """Rows cut to at most ``max_length`` tokens (keeping their start, or their end)."""
        lengths = np.diff(self.cu_seqlens)
        new = np.minimum(lengths, max_length)
        if (new == lengths).all():
            return self
        cu = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(new, out=cu[1:])
        first = self.cu_seqlens[:-1] + (lengths - new if keep == "end" else 0)
        tok = np.repeat(first - cu[:-1], new) + np.arange(cu[-1], dtype=np.int64)
        return self._replace_rows(tok, slice(None), cu)

    # -- torch -----------------------------------------------------------------------------------
    def to_torch(self, device=None, *, non_blocking: bool = False) -> "Batch":
        """The same batch with torch tensors: ``input_ids`` int32 ``[T]`` (zero-copy on the CPU),
        ``cu_seqlens`` int32 ``[N + 1]`` (the varlen kernels' type), ``values``, ``soft_mask`` and
        ``token_spans`` as tensors; per-row ``names``/``obs`` stay numpy. With a CUDA ``device``
        and ``non_blocking=True``, the copies go through pinned memory and overlap compute."""
        import torch

        if self.is_torch:
            return self if device is None else self._map(lambda t: t.to(device, non_blocking=non_blocking))
        if self.num_tokens > np.iinfo(np.int32).max:
            raise OverflowError(f"{self.num_tokens} tokens do not fit int32 cu_seqlens; split the batch")

        def conv(a, dtype=None):
            if a is None:
                return None
            a = np.ascontiguousarray(a if dtype is None else a.astype(dtype, copy=False))
            t = torch.from_numpy(a)
            if device is not None and torch.device(device).type != "cpu":
                if non_blocking:
                    t = t.pin_memory()
                t = t.to(device, non_blocking=non_blocking)
            return t

        return Batch(conv(self.input_ids), conv(self.cu_seqlens, np.int32), values=conv(self.values),
                     soft_mask=conv(self.soft_mask), token_spans=conv(self.token_spans), source=conv(self.source),
                     names=self.names, obs=self.obs, report=self.report)

    def to_numpy(self) -> "Batch":
        """The same batch with numpy arrays (``cu_seqlens`` int64)."""
        if not self.is_torch:
            return self
        return Batch(_np(self.input_ids), _np(self.cu_seqlens).astype(np.int64),
                     values=None if self.values is None else _np(self.values),
                     soft_mask=None if self.soft_mask is None else _np(self.soft_mask),
                     token_spans=None if self.token_spans is None else _np(self.token_spans),
                     source=_np(self.source), names=self.names, obs=self.obs, report=self.report)

    def _map(self, fn) -> "Batch":
        kw = {k: (None if getattr(self, k) is None else fn(getattr(self, k)))
              for k in ("input_ids", "cu_seqlens", "values", "soft_mask", "token_spans", "source")}
        return Batch(**kw, names=self.names, obs=self.obs, report=self.report)

    # -- joining and splitting -------------------------------------------------------------------
    @classmethod
    def concat(cls, parts: Sequence["Batch"], *, report=None) -> "Batch":
        """Rows of every part, in order. Optional fields are kept when every part has them.
        ``source`` is kept as each part has it (the producer's own numbering). A list passed in
        is emptied as it is copied, so the peak stays near the output plus one part."""
        if not isinstance(parts, list):
            parts = list(parts)
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), report=report)
        if any(p.is_torch for p in parts):
            raise TypeError("concat works on numpy batches")
        has = {k: all(getattr(p, k) is not None for p in parts) for k in ("values", "soft_mask", "token_spans")}
        n_tok = sum(p.num_tokens for p in parts)
        n_rows = sum(len(p) for p in parts)
        out = {"input_ids": np.empty(n_tok, parts[0].input_ids.dtype)}
        for k in has:
            if has[k]:
                a = getattr(parts[0], k)
                out[k] = np.empty((n_tok, *a.shape[1:]), a.dtype)
        cu = np.empty(n_rows + 1, np.int64)
        cu[0] = 0
        source = np.empty(n_rows, np.int64)
        names = [] if all(p.names is not None for p in parts) else None
        obs_keys = [k for k in parts[0].obs if all(k in p.obs for p in parts)]
        obs = {k: [] for k in obs_keys}
        t = r = 0
        for i in range(len(parts)):
            p = parts[i]
            m, nr = p.num_tokens, len(p)
            for k, dst in out.items():
                dst[t:t + m] = getattr(p, k)
            cu[r + 1:r + nr + 1] = p.cu_seqlens[1:] + t
            source[r:r + nr] = p.source
            if names is not None:
                names.append(np.asarray(p.names))
            for k in obs_keys:
                obs[k].append(np.asarray(p.obs[k]))
            t += m
            r += nr
            parts[i] = None  # release the part now
        return cls(out.pop("input_ids"), cu, **out, source=source,
                   names=np.concatenate(names) if names else None,
                   obs={k: np.concatenate(v) for k, v in obs.items()}, report=report)

    def plan(self, max_tokens: int, *, max_rows: int | None = None, padded: bool = False,
             sort: bool = True) -> "BatchPlan":
        """Token-budget batching: groups of rows, sorted by length (longest first), each under
        ``max_tokens`` tokens (``padded=True``: rows x longest row, what a padded model pays) and
        ``max_rows`` rows. A row longer than the budget gets a group of its own.

        Example:
            >>> b = Batch.from_rows([[1] * 5, [2] * 1, [3] * 4, [4] * 2])
            >>> plan = b.plan(max_tokens=6)
            >>> [g.tolist() for g in plan.groups]
            [[0], [2, 3], [1]]
            >>> plan.restore([np.array([0]), np.array([2, 3]), np.array([1])]).tolist()
            [0, 1, 2, 3]
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        lengths = np.diff(_np(self.cu_seqlens))
        order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
        groups = _pack_groups(lengths[order], max_tokens, max_rows, padded)
        return BatchPlan([order[a:b] for a, b in groups], len(lengths))

    def batches(self, max_tokens: int, **kw) -> Iterator[tuple[np.ndarray, "Batch"]]:
        """``(rows, sub-batch)`` for every group of :meth:`plan`."""
        for rows in self.plan(max_tokens, **kw).groups:
            yield rows, self.select(rows)

    # -- writing ---------------------------------------------------------------------------------
    def save(self, path, fmt: str | None = None) -> str:
        """Write to ``.npz``, ``.parquet`` or a Hugging Face ``datasets`` folder
        (:mod:`omicskern.io.writers`); returns the format used."""
        from omicskern.io.writers import save_batch

        return save_batch(self, path, fmt)

    def __repr__(self) -> str:
        extra = [k for k in ("values", "soft_mask", "token_spans") if getattr(self, k) is not None]
        kind = "torch" if self.is_torch else "numpy"
        return (f"Batch(rows={len(self)}, tokens={self.num_tokens}, max_seqlen={self.max_seqlen}, "
                f"{kind}{', ' + ', '.join(extra) if extra else ''})")


def _pack_groups(lengths: np.ndarray, max_tokens: int, max_rows: int | None, padded: bool) -> list[tuple[int, int]]:
    """Greedy cut of (already ordered) lengths into [a, b) groups under the budget."""
    groups = []
    a, n = 0, len(lengths)
    total = longest = 0
    for i in range(n):
        ln = int(lengths[i])
        rows = i - a + 1
        new_longest = max(longest, ln)
        cost = rows * new_longest if padded else total + ln
        if i > a and (cost > max_tokens or (max_rows is not None and rows > max_rows)):
            groups.append((a, i))
            a, total, longest = i, ln, ln
        else:
            total += ln
            longest = new_longest
    if n:
        groups.append((a, n))
    return groups


@dataclass(frozen=True)
class BatchPlan:
    """Groups of row indices from :meth:`Batch.plan`; ``order`` is their concatenation and
    ``inverse`` puts results computed in group order back in row order."""

    groups: list
    num_rows: int

    @property
    def order(self) -> np.ndarray:
        return np.concatenate(self.groups) if self.groups else np.zeros(0, np.int64)

    @property
    def inverse(self) -> np.ndarray:
        inv = np.empty(self.num_rows, np.int64)
        inv[self.order] = np.arange(self.num_rows)
        return inv

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def restore(self, results: Sequence) -> Any:
        """Per-group row results (arrays or tensors with a leading row dimension) -> one array in
        the original row order."""
        if len(results) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} group results, got {len(results)}")
        if results and _is_torch(results[0]):
            import torch

            out = torch.cat(list(results))
            return out[torch.as_tensor(self.inverse, device=out.device)]
        out = np.concatenate([np.asarray(r) for r in results]) if results else np.zeros(0)
        return out[self.inverse]


@dataclass(frozen=True, eq=False)
class PaddedBatch:
    """A batch padded to one length: ``input_ids`` ``[N, L]``, ``attention_mask`` bool ``[N, L]``
    (True = real token), ``values`` / ``soft_mask`` ``[N, L]`` or None, ``side`` where the padding
    is. Indexing by name (``batch["input_ids"]``) works as with Hugging Face's ``BatchEncoding``.

    Example:
        >>> p = Batch.from_rows([[4, 5], [6]]).to_padded(pad_id=0, side="left")
        >>> p.input_ids.tolist(), p.attention_mask.tolist()
        ([[4, 5], [0, 6]], [[True, True], [False, True]])
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    values: np.ndarray | None = None
    soft_mask: np.ndarray | None = None
    side: str = "right"

    def __post_init__(self):
        ids = self.input_ids
        kind = getattr(getattr(ids, "dtype", None), "kind", None)
        if kind is None and hasattr(ids, "is_floating_point"):  # a torch tensor
            bad = ids.is_floating_point() or ids.is_complex() or ids.dtype == _torch_bool(ids)
        else:
            bad = kind is not None and kind not in "iu" and np.size(ids) > 0
        if bad:
            raise TypeError(f"input_ids must hold integer token ids, got {ids.dtype} (a float id is not "
                            "rounded or truncated)")

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in ("input_ids", "attention_mask", "values", "soft_mask"):
            raise KeyError(key)
        return getattr(self, key)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def keys(self):
        return [k for k in ("input_ids", "attention_mask", "values", "soft_mask") if getattr(self, k) is not None]

    def to_ragged(self) -> Batch:
        """Back to a :class:`Batch` (the real tokens, row by row, in column order)."""
        mask = np.asarray(self.attention_mask).astype(bool, copy=False)
        lengths = mask.sum(axis=1, dtype=np.int64)
        flat = mask.reshape(-1)
        pick = lambda a: None if a is None else np.asarray(a).reshape(-1, *np.asarray(a).shape[2:])[flat]  # noqa: E731
        return Batch.from_lengths(pick(self.input_ids), lengths, values=pick(self.values),
                                  soft_mask=pick(self.soft_mask))


def _pad(a: np.ndarray, cu: np.ndarray, pad_value, width: int, left: bool, num_threads: int):
    """Ragged ``a [T]`` -> ``[N, width]`` filled with ``pad_value`` + bool mask (vectorised; the C++
    core's parallel copy for the int32/uint8 arrays tokenizers produce)."""
    if a.dtype in (np.int32, np.uint8):
        try:
            from omicskern._native import load_C

            C = load_C()
        except ImportError:
            C = None
        if C is not None:
            return C.ragged_pad(np.ascontiguousarray(a), np.ascontiguousarray(cu, dtype=np.int64),
                                a.dtype.type(pad_value), int(width), bool(left), int(num_threads))
    n = cu.size - 1
    lengths = np.diff(cu)
    out = np.full((n, width), pad_value, dtype=a.dtype)
    mask = np.zeros((n, width), dtype=bool)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    cols = np.arange(a.shape[0], dtype=np.int64) - np.repeat(cu[:-1], lengths)
    if left:
        cols += np.repeat(width - lengths, lengths)
    out[rows, cols] = a
    mask[rows, cols] = True
    return out, mask
