"""Ranks of a job: torchrun's environment, and torch.distributed for the few collective steps.

A job launched by ``torchrun --nproc_per_node N -m omicskern <cmd> ...`` (or across nodes with
``--nnodes``/``--rdzv-endpoint``) finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment. Work is split by rank without communication (:func:`~omicskern.pipelines.units.split_by_rank`
on a unit list every rank computes identically); torch.distributed is used only to wait for every
rank before rank 0 writes the job's metadata (:meth:`Ranks.barrier`), with the ``gloo`` backend on
CPU and ``nccl`` on CUDA. A plain run (no torchrun) is rank 0 of 1 and never initialises a
process group.

Example:
    >>> r = Ranks.from_env({})
    >>> (r.rank, r.world_size, r.is_main)
    (0, 1, True)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Ranks"]


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass
class Ranks:
    """This process's place in a job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _group: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Ranks":
        """Reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (defaults: a single process)."""
        env = os.environ if env is None else env
        world = _int_env(env, "WORLD_SIZE", 1)
        rank = _int_env(env, "RANK", 0)
        local = _int_env(env, "LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str | None) -> str:
        """The device this rank runs on: ``cuda`` becomes ``cuda:<local_rank>`` under torchrun;
        ``None`` means CUDA when available, else CPU."""
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and self.distributed:
            return f"cuda:{self.local_rank}"
        return device

    def init(self, device: str = "cpu", timeout_s: float = 7200.0) -> "Ranks":
        """Joins the process group (``nccl`` for CUDA, ``gloo`` otherwise) when there is more than
        one rank; a no-op for a single process. ``timeout_s`` bounds :meth:`barrier` waits (ranks
        finish their shards at different times on uneven inputs)."""
        if not self.distributed or self._group:
            return self
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            kwargs = {}
            if backend == "nccl":
                import torch

                kwargs["device_id"] = torch.device(self.device("cuda"))
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        self._group = True
        return self

    def barrier(self) -> None:
        """Waits for every rank (no-op for one process)."""
        if self._group:
            import torch.distributed as dist

            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (a failed rank makes the others stop cleanly instead of
        waiting forever on a barrier). One process: ``ok``."""
        if not self._group:
            return ok
        import torch
        import torch.distributed as dist

        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return int(t.item()) == 0

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._group = False
