"""Process-group set-up: one process per pipeline rank, over torch.distributed.

The same function serves every way of starting the processes: the local
launcher (``conveyor.runtime.launch``), ``torchrun`` on one node and
``torchrun`` across nodes. All of them hand the rank its place through the
standard environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and rendezvous through ``env://``; the local launcher hosts the
store in the parent, as torchrun's agent does, so the port it picked stays
bound for the whole run and two runs never collide.

Backend and device: NCCL with ``cuda:LOCAL_RANK`` when CUDA is present (and
every local rank can have its own GPU), gloo with the CPU otherwise. Nothing
else in the runtime branches on the backend, except that receives are posted
in schedule order on NCCL (see ``interpreter``), and that the step's two
small exchanges are collectives there, point-to-point elsewhere
(``procs.star``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from datetime import timedelta

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError

__all__ = ["RankContext", "init_rank", "current_context", "env_is_distributed", "default_backend"]


@dataclass(frozen=True)
class RankContext:
    """Where this process sits in the pipeline (and, with data parallelism, in
    the dp x pp mesh; see ``conveyor.runtime.transport.mesh``).

    rank:        this process's pipeline rank, 0 .. world_size-1.
    world_size:  the pipeline's P (the whole world when dp_size is 1).
    local_rank:  rank on this node; picks the GPU.
    device:      where this rank's stages and tensors live.
    backend:     "gloo" or "nccl".
    launcher:    "local" (conveyor's launcher), "torchrun" (or any launcher
                 that sets the environment variables), or "single" (one
                 process, no process group).
    dp_rank, dp_size: this rank's data-parallel replica and the number of
                 replicas. The context ``launch`` passes describes the whole
                 world as one pipeline (dp_rank 0, dp_size 1 on every rank):
                 only ``Pipeline(..., dp=N)`` splits the world, and that
                 pipeline's ``pipe.ctx`` holds the split (its rank and
                 world_size are then the pipeline rank and P; global_rank is
                 the process's rank in the world).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str
    dp_rank: int = 0
    dp_size: int = 1
    pp_group: Any = None  # the pipeline's process group; None: the whole world
    dp_group: Any = None  # this pipeline rank's replicas; None when dp_size is 1

    # Global rank = dp_rank * world_size + rank.

    @property
    def pp_rank(self) -> int:
        return self.rank

    @property
    def pp_size(self) -> int:
        return self.world_size

    @property
    def global_rank(self) -> int:
        """This process's rank in the whole world (dp x pp)."""
        return self.dp_rank * self.world_size + self.rank

    @property
    def global_size(self) -> int:
        return self.dp_size * self.world_size

    def to_global(self, r: int) -> int:
        """The global rank of pipeline rank ``r`` of this rank's replica."""
        return self.dp_rank * self.world_size + r


def current_context() -> RankContext:
    """This process's context from the initialised default process group (a
    script that set it up itself), or one process without one."""
    if not dist.is_initialized():
        return RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                           backend="none", launcher="single")
    backend = dist.get_backend()
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    return RankContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                       device=device, backend=backend, launcher="external")


def env_is_distributed() -> bool:
    """True when a launcher (torchrun, or conveyor's own) set this process's rank."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def default_backend(local_world_size: int = 1) -> str:
    """NCCL when every rank on this node can have a GPU of its own, else gloo.

    NCCL refuses two ranks on one GPU, so with fewer GPUs than local ranks the
    pipeline runs on the CPU over gloo rather than failing.
    """
    if torch.cuda.is_available() and torch.cuda.device_count() >= max(local_world_size, 1):
        return "nccl"
    return "gloo"


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise PipelineError(f"environment variable {name} is not set; start the processes "
                                f"with conveyor.runtime.launch or torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise PipelineError(f"environment variable {name}={raw!r} is not an integer") from None


def init_rank(*, backend: str | None = None, timeout_s: float = 300.0,
              launcher: str = "torchrun") -> RankContext:
    """Join the process group described by the environment and pick the device.

    Reuses a process group that is already initialised. ``timeout_s`` bounds
    every collective and every point-to-point wait, so a rank whose peer
    vanished without closing its connections still stops.

    Raises PipelineError when the environment is incomplete or the backend
    cannot be used (e.g. "nccl" without CUDA).
    """
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    backend = backend or default_backend(_env_int("LOCAL_WORLD_SIZE", world_size))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise PipelineError("backend 'nccl' needs CUDA, which this machine lacks; "
                                "use backend='gloo' (the CPU default)")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif backend == "gloo":
        device = torch.device("cpu")
    else:
        raise PipelineError(f"unknown backend {backend!r}; use 'gloo' (CPU) or 'nccl' (CUDA)")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
    elif dist.get_rank() != rank or dist.get_world_size() != world_size:
        raise PipelineError(
            f"a process group is already initialised as rank {dist.get_rank()} of "
            f"{dist.get_world_size()}, but the environment says rank {rank} of {world_size}")
    return RankContext(rank=rank, world_size=world_size, local_rank=local_rank,
                       device=device, backend=backend, launcher=launcher)
