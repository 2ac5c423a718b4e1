"""Work units of a job and their split over ranks.

A :class:`WorkUnit` is the smallest piece of a job that is written (one shard) and resumed as a
whole: a range of windows of one FASTA record, or a range of cells. Units are numbered in job
order; the number names the shard (``shard-00003.npz``) whatever rank writes it, so the output
of a job is the same however many ranks made it.

Example:
    >>> units = fasta_units(["chr1", "chr2"], [1000, 300], window=100)
    >>> [(u.name, u.start, u.stop) for u in units]
    [('chr1', 0, 10), ('chr2', 0, 3)]
    >>> [u.index for u in split_by_rank(cell_units(10, 3), rank=1, world_size=2)]
    [2, 3]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["WorkUnit", "fasta_units", "cell_units", "split_by_rank"]


@dataclass(frozen=True)
class WorkUnit:
    """Unit ``index`` of a job: items ``[start, stop)`` of ``name``.

    For FASTA jobs ``name`` is the record and the items are its windows (a whole record is one
    window); for cell jobs ``name`` is ``"cells"`` and the items are cells. ``size`` is the cost
    used to balance ranks (bases, cells).
    """

    index: int
    name: str
    start: int
    stop: int
    size: int
    #: several whole records in one unit (``name`` is the first; all their windows): set by
    #: :func:`fasta_units` with ``group_bases``, so 300,000 short reads are not 300,000 shards
    records: tuple = ()

    @property
    def shard(self) -> str:
        """File name of this unit's shard."""
        return f"shard-{self.index:05d}.npz"

    @property
    def names(self) -> tuple:
        """The records this unit covers."""
        return self.records or (self.name,)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.records:
            del d["records"]
        else:
            d["records"] = list(self.records)
        return d


def _n_windows(length: int, window: int | None, stride: int | None) -> int:
    if not window:
        return 1
    from omicskern.io.fasta import window_starts

    return max(len(window_starts(length, window, stride or window)), 1)


def fasta_units(names: Sequence[str], lengths: Sequence[int], window: int | None = None,
                stride: int | None = None, max_unit_bases: int | None = None,
                group_bases: int | None = None) -> list[WorkUnit]:
    """One unit per record; with ``window`` and ``max_unit_bases``, a record longer than
    ``max_unit_bases`` is cut into units of consecutive windows covering about that many bases
    (start to start), so a big chromosome is not one long unit. With ``group_bases``,
    consecutive records of at most that many bases are packed whole into one unit of up to
    ``group_bases`` bases (``records`` lists them), so many short records make few units.
    Linear in the number of records."""
    units: list[WorkUnit] = []
    group: list[tuple[str, int]] = []
    group_size = 0

    def close_group() -> None:
        nonlocal group_size
        if len(group) == 1:  # a plain one-record unit: all its windows
            name, length = group[0]
            units.append(WorkUnit(len(units), name, 0, _n_windows(length, window, stride), int(length)))
        elif group:  # start/stop count records here
            units.append(WorkUnit(len(units), group[0][0], 0, len(group), int(group_size),
                                  tuple(n for n, _ in group)))
        if group:
            group.clear()
            group_size = 0

    for name, length in zip(names, lengths):
        if group_bases and group_bases > 0 and length <= group_bases:
            if group and group_size + length > group_bases:
                close_group()
            group.append((str(name), int(length)))
            group_size += int(length)
            continue
        close_group()
        n = _n_windows(length, window, stride)
        step = n
        if window and max_unit_bases and max_unit_bases > 0:
            step = max(1, max_unit_bases // (stride or window))
        for a in range(0, n, step):
            b = min(a + step, n)
            if window:
                s = stride or window
                size = min(length, (b - 1) * s + window) - a * s
            else:
                size = length
            units.append(WorkUnit(len(units), str(name), a, b, int(max(size, 0))))
    close_group()
    return units


def cell_units(n_cells: int, cells_per_unit: int) -> list[WorkUnit]:
    """Cells ``[0, n_cells)`` in units of ``cells_per_unit`` (the last may be smaller)."""
    if cells_per_unit < 1:
        raise ValueError(f"cells_per_unit must be >= 1, got {cells_per_unit}")
    return [WorkUnit(i, "cells", a, min(a + cells_per_unit, n_cells), min(a + cells_per_unit, n_cells) - a)
            for i, a in enumerate(range(0, n_cells, cells_per_unit))]


def split_by_rank(units: Sequence[WorkUnit], rank: int, world_size: int,
                  how: str = "contiguous") -> list[WorkUnit]:
    """The units rank ``rank`` of ``world_size`` works on; every unit goes to exactly one rank and
    the answer depends only on the unit list (deterministic, no communication).

    ``how="contiguous"``: consecutive units, cut where the running total of ``size`` crosses
    ``rank / world_size`` of the whole (balanced by cost, neighbours stay together);
    ``"round_robin"``: unit ``i`` goes to rank ``i % world_size``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if how == "round_robin":
        return [u for i, u in enumerate(units) if i % world_size == rank]
    if how != "contiguous":
        raise ValueError(f"how must be 'contiguous' or 'round_robin', got {how!r}")
    total = sum(max(u.size, 1) for u in units)
    out, acc = [], 0
    for u in units:
        mid = acc + max(u.size, 1) / 2  # a unit belongs to the rank its midpoint falls in
        acc += max(u.size, 1)
        if min(int(mid * world_size // total), world_size - 1) == rank:
            out.append(u)
    return out
