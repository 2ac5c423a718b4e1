"""Helpers suites use to turn timings into records (one place, so every suite's records agree)."""

from __future__ import annotations

from omicskern.bench.timing import Timing


def ab_records(case: str, params: dict, timings: dict[str, Timing], descs: dict[str, str], baseline: str | None,
               metric: str, unit: str, *, per: float = 1.0, scale: float = 1.0, rate: bool = False,
               note: str | None = None, extra: dict | None = None) -> list[dict]:
    """One record per implementation of an interleaved A/B(/C...) timing. The baseline's own record
    has no baseline; every other record carries the baseline's name, description and value, and so
    its ratio. ``per``/``scale``/``rate``: see :meth:`Timing.fields`."""
    out = []
    base = timings.get(baseline) if baseline else None
    base_fields = base.fields(per, scale, rate) if base else None
    for name, t in timings.items():
        r = dict(case=case, params=dict(params), impl=name, impl_desc=descs.get(name), metric=metric, unit=unit,
                 note=note, **t.fields(per, scale, rate), **(extra or {}))
        if base is not None and name != baseline:
            r.update(baseline=baseline, baseline_desc=descs.get(baseline), baseline_value=base_fields["value"])
        out.append(r)
    return out


def status_record(case: str, params: dict, impl: str, metric: str, unit: str, status: str, note: str,
                  desc: str | None = None) -> dict:
    """A measurement that was not taken: ``cut`` (beyond the budget), ``pending`` (not available
    yet), ``oom``, ``error`` or ``skipped``, with the reason."""
    return dict(case=case, params=dict(params), impl=impl, impl_desc=desc, metric=metric, unit=unit, status=status,
                note=note)


def memory_record(case: str, params: dict, impl: str, peak_bytes: float | None, method: str, desc: str | None = None,
                  baseline: str | None = None, baseline_bytes: float | None = None) -> dict:
    """Peak memory (MiB) of one call, ``method`` as :func:`~omicskern.bench.timing.peak_memory` says."""
    mib = None if peak_bytes is None else peak_bytes / 2**20
    r = dict(case=case, params={**params, "mem_method": method}, impl=impl, impl_desc=desc, metric="peak_mem",
             unit="MiB", value=mib, repeats=1)
    if baseline is not None and baseline_bytes is not None:
        r.update(baseline=baseline, baseline_value=baseline_bytes / 2**20)
    return r
