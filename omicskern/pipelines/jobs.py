"""Job mechanics shared by the pipelines: job keys, atomic writes, manifests, resumable sharded
outputs, single-file outputs that remember their job.

A job is identified by the *content* that determines its output, never by paths: a
:class:`JobKey` holds the input's fingerprint (for FASTA: record names, lengths and a hash of the
sequence), the producer's identity (a hash of the tokenizer's vocabulary/config, not the path of
its file) and the settings (window, stride, special tokens...). Moving or renaming the input
keeps the key, so the job resumes; changing one base changes it, so the old output is refused
(:class:`JobMismatchError`) unless ``overwrite=True``.

Outputs:

* :class:`ShardedJob`: a folder with ``manifest.json`` (format, job key, settings, one entry per
  work unit with its shard and status) and one shard per unit, each written atomically. A rerun
  of the same job skips the units already done; several ranks may work on one folder at once
  (manifest updates are read-merge-write under an ``fcntl`` lock on ``.manifest.lock``).
* single files (``.npz``, ``.parquet``) and ``datasets`` folders: :func:`check_output` before
  the work, :func:`record_job` on the temporary output before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from omicskern.errors import JobMismatchError
from omicskern.pipelines.units import WorkUnit, split_by_rank

__all__ = ["JobKey", "JobMismatchError", "Manifest", "ShardedJob", "atomic_write", "atomic_write_text",
           "check_output", "record_job", "read_job", "digest", "JOB_MEMBER"]

MANIFEST_FORMAT = "omicskern.job/1"
#: Name under which single-file outputs store their job (npz member, parquet metadata key,
#: ``<name>.json`` inside a datasets folder).
JOB_MEMBER = "omicskern_job"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, size: int = 16) -> str:
    """Hex blake2b of the canonical JSON of ``obj`` (or of bytes)."""
    data = obj if isinstance(obj, (bytes, bytearray, memoryview)) else canonical_json(obj).encode()
    return hashlib.blake2b(data, digest_size=size).hexdigest()


@dataclass(frozen=True)
class JobKey:
    """What determines a job's output: ``kind`` (e.g. ``"tokenize-fasta"``), the ``input``
    fingerprint, the ``producer`` identity (tokenizer, model) and the ``settings``. Two runs with
    equal keys write byte-identical outputs; :attr:`hexdigest` is what outputs record."""

    kind: str
    input: dict
    producer: dict
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "input": self.input, "producer": self.producer, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "JobKey":
        return cls(d.get("kind", ""), d.get("input", {}), d.get("producer", {}), d.get("settings", {}))

    @functools.cached_property
    def hexdigest(self) -> str:
        return digest(self.to_dict())

    def differences(self, other: dict | "JobKey" | None) -> str:
        """Readable list of what differs from ``other`` (a stored key)."""
        if other is None:
            return "no job recorded"
        o = other.to_dict() if isinstance(other, JobKey) else other
        me = self.to_dict()
        diffs = []
        if o.get("kind") != me["kind"]:
            diffs.append(f"kind {o.get('kind')!r} != {me['kind']!r}")
        if canonical_json(o.get("input")) != canonical_json(me["input"]):
            diffs.append("input content")
        if canonical_json(o.get("producer")) != canonical_json(me["producer"]):
            diffs.append("tokenizer/model")
        so, sm = o.get("settings") or {}, me["settings"]
        for k in sorted(set(so) | set(sm)):
            if canonical_json(so.get(k)) != canonical_json(sm.get(k)):
                diffs.append(f"{k} {so.get(k)!r} -> {sm.get(k)!r}")
        return ", ".join(diffs) or "same key"


def _mismatch(out: Path, key: JobKey, stored) -> JobMismatchError:
    return JobMismatchError(f"{out}: output belongs to another job ({key.differences(stored)}); "
                            "use overwrite=True to replace it, or another output path")


# -- atomic writes ------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(p: Path) -> None:
    paths = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
    for q in paths:
        with open(q, "rb") as f:
            os.fsync(f.fileno())


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}")


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same folder, so ``os.replace`` is a rename),
    keeping the suffix (writers such as ``np.savez`` add theirs otherwise). It names the host
    and process, so :func:`remove_stale_temps` can tell a dead writer's leftovers."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                          f"{''.join(path.suffixes[-1:])}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, name: str | None = None) -> int:
    """Deletes temporary outputs left in ``folder`` by killed writers of this host (their process
    is gone); other hosts' (shared file systems) and live ones are left alone. With ``name``,
    only the temporaries of the output ``name`` (a user's folder holding other things)."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if name is not None and not p.name.startswith(f".{name}.tmp-"):
            continue
        if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            _remove(p)
            n += 1
    return n


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, fsync: bool = True,
                 fsync_dir: bool = True) -> Path:
    """``write(tmp)`` writes the output (a file or a folder) at a temporary path in the same
    folder; it is fsynced and renamed to ``path`` (``os.replace``), so ``path`` is either the old
    or the complete new output, also after a crash. An old folder at ``path`` is moved aside
    first and removed after the rename. ``fsync_dir`` also makes the rename itself durable
    (shards skip it: a shard lost with the rename is simply redone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        if fsync:
            _fsync_tree(tmp)
        if tmp.is_dir() and path.exists():
            old = temp_path(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        if fsync and fsync_dir:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            _remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda t: t.write_text(text), fsync=fsync)


# -- job of single-file outputs -----------------------------------------------------------------
def _fmt_of(path: Path) -> str:
    s = path.name.lower()
    if s.endswith(".npz"):
        return "npz"
    if s.endswith((".parquet", ".pq")):
        return "parquet"
    return "dataset" if path.is_dir() else "file"


def read_job(path: str | os.PathLike) -> dict | None:
    """The job recorded in an output (npz member, parquet metadata, datasets folder file or a
    sharded folder's manifest), or None when there is none."""
    path = Path(path)
    fmt = _fmt_of(path)
    try:
        if path.is_dir():
            for name in ("manifest.json", f"{JOB_MEMBER}.json"):
                if (path / name).is_file():
                    d = json.loads((path / name).read_text())
                    return d.get("job") if isinstance(d, dict) else None
            return None
        if fmt == "npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                if JOB_MEMBER in z.files:
                    return json.loads(str(z[JOB_MEMBER])).get("job")
            return None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            md = pq.read_schema(path).metadata or {}
            raw = md.get(JOB_MEMBER.encode())
            return json.loads(raw).get("job") if raw else None
    except (OSError, ValueError, KeyError, ImportError):
        return None
    return None


def check_output(path: str | os.PathLike, key: JobKey, *, overwrite: bool = False) -> bool:
    """Before a single-output job: True when ``path`` already holds this job's output (rerunning
    rewrites the same bytes), False when it is free (absent, or ``overwrite``); raises
    :class:`JobMismatchError` when it holds anything else."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    stored = read_job(path)
    if stored is not None and JobKey.from_dict(stored).hexdigest == key.hexdigest:
        return True
    if overwrite:
        return False
    if stored is None:
        raise JobMismatchError(f"{path} exists and is not an omicskern output of a known job; use overwrite=True "
                               "to replace it, or another output path")
    raise _mismatch(path, key, stored)


def _job_record(key: JobKey, extra: dict | None) -> str:
    return json.dumps({"format": MANIFEST_FORMAT, "job_key": key.hexdigest, "job": key.to_dict(), **(extra or {})})


def record_job(tmp: str | os.PathLike, key: JobKey, fmt: str | None = None, extra: dict | None = None) -> None:
    """Stores the job in a (temporary) output just written: a ``omicskern_job`` member appended
    to an ``.npz`` (``np.load`` lists it as one more key), a ``omicskern_job`` key of a parquet
    file's schema metadata (the file is rewritten: pyarrow cannot edit metadata in place), or an
    ``omicskern_job.json`` file inside a folder."""
    tmp = Path(tmp)
    fmt = fmt or _fmt_of(tmp)
    text = _job_record(key, extra)
    if fmt == "npz":
        import zipfile

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.array(text))
        with zipfile.ZipFile(tmp, "a") as zf:
            if f"{JOB_MEMBER}.npy" in zf.namelist():
                raise ValueError(f"{tmp} already records a job")
            zf.writestr(zipfile.ZipInfo(f"{JOB_MEMBER}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(tmp, memory_map=True)
        md = dict(table.schema.metadata or {})
        md[JOB_MEMBER.encode()] = text.encode()
        again = tmp.with_name(tmp.name + ".md")
        try:
            pq.write_table(table.replace_schema_metadata(md), str(again))
            os.replace(again, tmp)
        finally:
            if again.exists():
                again.unlink()
    elif tmp.is_dir():
        (tmp / f"{JOB_MEMBER}.json").write_text(text)
    else:
        raise ValueError(f"cannot record a job in {tmp} (format {fmt!r})")


# -- manifests and sharded outputs --------------------------------------------------------------
@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Exclusive lock of a job folder (manifest read-merge-write by concurrent ranks)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: one rank per folder
        yield
        return
    with open(out / ".manifest.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Manifest:
    """``manifest.json`` of a sharded output: ``format``, ``job_key`` (hex), ``job`` (the
    :class:`JobKey`), ``config`` (settings as the user gave them, informational), ``complete`` and
    one entry per unit under ``units_field`` (``shard``, ``done`` + what the pipeline adds)."""

    def __init__(self, path: Path, data: dict, units_field: str = "units"):
        self.path = Path(path)
        self.data = data
        self.units_field = units_field

    @classmethod
    def new(cls, path: Path, key: JobKey, units: Sequence[WorkUnit], *, config: dict | None = None,
            units_field: str = "units") -> "Manifest":
        entries = [{**u.to_dict(), "shard": u.shard, "done": False} for u in units]
        data = {"format": MANIFEST_FORMAT, "job_key": key.hexdigest, "job": key.to_dict(), "config": config or {},
                "complete": not entries, units_field: entries}
        return cls(path, data, units_field)

    @classmethod
    def load(cls, path: Path, units_field: str = "units") -> "Manifest":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a valid manifest: {e}") from None
        return cls(path, data, units_field)

    @property
    def job_key(self) -> str | None:
        return self.data.get("job_key") if self.data.get("format") == MANIFEST_FORMAT else None

    @property
    def entries(self) -> list[dict]:
        return self.data.get(self.units_field, [])

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1))


class ShardedJob:
    """A resumable folder output of ``units``: one shard per unit (``unit.shard``) + manifest.

    Example:
        >>> job = ShardedJob(out, key, units, config=settings).open(overwrite=False)
        >>> for u in job.pending(rank, world_size):
        ...     job.write_shard(u, lambda tmp: np.savez(tmp, ...), rows=3)
    """

    def __init__(self, out: str | os.PathLike, key: JobKey, units: Sequence[WorkUnit], *,
                 config: dict | None = None, units_field: str = "units"):
        self.out = Path(out)
        self.key = key
        self.units = list(units)
        self.config = config or {}
        self.units_field = units_field
        self.manifest: Manifest | None = None

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    def open(self, *, overwrite: bool = False) -> "ShardedJob":
        """Creates the folder and manifest, or checks that the existing ones are this job's.
        Another job's folder (or a non-empty folder without manifest) is refused with
        :class:`JobMismatchError` unless ``overwrite``, which deletes the old shards first."""
        out = self.out
        self._flushed = time.monotonic()
        if out.exists() and not out.is_dir():
            raise JobMismatchError(f"{out} exists and is not a folder (a sharded output is a folder)")
        out.mkdir(parents=True, exist_ok=True)
        with _locked(out):
            remove_stale_temps(out)
            if self.manifest_path.is_file():
                old = Manifest.load(self.manifest_path, self.units_field)
                if old.job_key == self.key.hexdigest:
                    self._merge_progress()
                    return self
                if not overwrite:
                    raise _mismatch(out, self.key, old.data.get("job"))
                for e in old.entries:
                    if isinstance(e, dict) and isinstance(e.get("shard"), str) and "/" not in e["shard"]:
                        (out / e["shard"]).unlink(missing_ok=True)
                self._log.unlink(missing_ok=True)
                self.manifest_path.unlink()
            elif any(p.name != ".manifest.lock" and not _TEMP.match(p.name) for p in out.iterdir()) and not overwrite:
                raise JobMismatchError(f"{out} is not empty and has no manifest.json; use overwrite=True "
                                       "or another output path")
            self.manifest = Manifest.new(self.manifest_path, self.key, self.units, config=self.config,
                                         units_field=self.units_field)
            self.manifest.save()
        return self

    # Unit status: a shard at its final name is complete (atomic write), so "done" is "its shard
    # exists". What the pipeline reports per unit (rows, tokens) is appended to ``.progress.jsonl``
    # (one short line per unit, O(1)) and merged into manifest.json by :meth:`flush`: every
    # ``flush_s`` seconds, at :meth:`finish` and on the next open, so the manifest is not rewritten
    # (O(units)) for every unit. The log is removed once the job is complete.
    flush_s = 5.0

    @property
    def _log(self) -> Path:
        return self.out / ".progress.jsonl"

    def _entry(self, unit: WorkUnit) -> dict:
        entries = self.manifest.entries if self.manifest is not None else []
        e = entries[unit.index] if unit.index < len(entries) else None
        return e if isinstance(e, dict) and e.get("shard") == unit.shard else {}

    def is_done(self, unit: WorkUnit, verify: bool = True) -> bool:
        """The unit's shard is there with the size (and, with ``verify``, the blake2b) recorded
        when it was written. A shard nothing recorded (killed between rename and log), a
        truncated or a changed one is not done."""
        e = self._entry(unit)
        try:
            size = (self.out / unit.shard).stat().st_size
        except OSError:
            return False
        if e.get("bytes") != size or not isinstance(e.get("blake2b"), str):
            return False
        return not verify or _file_digest(self.out / unit.shard) == e["blake2b"]

    def pending(self, rank: int = 0, world_size: int = 1, how: str = "contiguous") -> list[WorkUnit]:
        """This rank's units whose shard is not there and valid yet: each recorded shard is
        checked against the size and blake2b recorded when it was written (one read of the
        done output); a lost, truncated or corrupted shard is removed and redone."""
        todo = []
        for u in split_by_rank(self.units, rank, world_size, how):
            if not self.is_done(u):
                with contextlib.suppress(OSError):
                    (self.out / u.shard).unlink()
                todo.append(u)
        return todo

    def write_shard(self, unit: WorkUnit, write: Callable[[Path], None], **info) -> Path:
        """Writes the unit's shard atomically and logs it done (with ``info``, its size and its
        blake2b, checked on resume)."""
        sums: dict = {}

        def write_and_sum(tmp: Path) -> None:
            write(tmp)
            sums.update(bytes=tmp.stat().st_size, blake2b=_file_digest(tmp))

        path = atomic_write(self.out / unit.shard, write_and_sum, fsync_dir=False)
        line = json.dumps({"index": unit.index, **info, **sums}, sort_keys=True) + "\n"
        fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        if time.monotonic() - self._flushed > self._flush_every:
            self.flush()
        return path

    _flush_every = flush_s

    def flush(self) -> None:
        """Merges the progress log and the shards present into manifest.json. A flush costs
        O(units); the next one waits at least 20 times as long as this one took, so flushing
        stays a small share of the run (linear in units overall, whatever their number)."""
        t0 = time.monotonic()
        with _locked(self.out):
            self._merge_progress()
        self._flushed = time.monotonic()
        self._flush_every = max(self.flush_s, 20 * (self._flushed - t0))

    finish = flush

    def _merge_progress(self) -> None:
        m = Manifest.load(self.manifest_path, self.units_field)  # other ranks may have written
        if m.job_key != self.key.hexdigest:
            raise JobMismatchError(f"{self.out}: the manifest changed to another job while this one ran")
        info: dict[int, dict] = {}
        if self._log.is_file():
            for raw in self._log.read_text().splitlines():
                try:
                    d = json.loads(raw)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if isinstance(d, dict) and isinstance(d.get("index"), int):
                    info[d.pop("index")] = d
        changed = False
        for i, e in enumerate(m.entries):
            new = {**e, **info.get(i, {})}
            try:
                done = (self.out / e["shard"]).stat().st_size == new.get("bytes")
            except OSError:
                done = False
            new["done"] = done
            if new != e:
                m.entries[i] = new
                changed = True
        complete = all(e.get("done") for e in m.entries)
        if changed or complete != m.data.get("complete"):
            m.data["complete"] = complete
            m.save()
        if complete:
            self._log.unlink(missing_ok=True)
        self.manifest = m

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.manifest.complete
