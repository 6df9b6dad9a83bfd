"""Arguments of the runtime's API, checked where they are given.

Each check raises PipelineError naming the value and the fix, before any
process group or model is touched, so a typo fails at once and the same way on
every rank.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from conveyor.errors import PipelineError

__all__ = ["check_config", "check_callables", "check_launch_options", "check_policy",
           "MAX_TIMEOUT_S", "MAX_KEEP", "MAX_RESTARTS"]

# timedelta and gloo's millisecond timeouts overflow far above this (a year).
MAX_TIMEOUT_S = 365 * 24 * 3600.0
MAX_KEEP = 1000      # checkpoints a CheckpointPolicy keeps: disk use stays bounded
MAX_RESTARTS = 100   # restarts of a local launch


def _int_in(name: str, value, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PipelineError(f"{name}={value!r}; use an integer in {lo}..{hi} ({what})")


def _positive_seconds(name: str, value, *, allow_none: bool = False, zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if zero else value > 0)
          and value <= MAX_TIMEOUT_S)
    if not ok:
        lo = ">= 0" if zero else "> 0"
        raise PipelineError(f"{name}={value!r} is not a number of seconds {lo} and at most "
                            f"{MAX_TIMEOUT_S:g}; e.g. {name}=60")


def check_config(cfg) -> None:
    """Raise PipelineError for a PipelineConfig field out of its range."""
    if cfg.loss_reduction not in ("mean", "sum"):
        raise PipelineError(f"loss_reduction={cfg.loss_reduction!r}; use 'mean' or 'sum' "
                            f"(how loss_fn reduces over a micro-batch)")
    _positive_seconds("timeout_s", cfg.timeout_s)
    if isinstance(cfg.clock_rounds, bool) or not isinstance(cfg.clock_rounds, int) \
            or not 1 <= cfg.clock_rounds <= 1000:
        raise PipelineError(f"clock_rounds={cfg.clock_rounds!r}; use an integer in 1..1000 "
                            f"(ping-pongs for the clock alignment, default 8)")
    if cfg.max_grad_norm is not None and not (
            isinstance(cfg.max_grad_norm, (int, float)) and not isinstance(cfg.max_grad_norm, bool)
            and math.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm > 0):
        raise PipelineError(f"max_grad_norm={cfg.max_grad_norm!r}; use a finite number > 0 "
                            f"(e.g. 1.0), or None for no clipping")
    if isinstance(cfg.accumulate, bool) or not isinstance(cfg.accumulate, int) \
            or cfg.accumulate < 1:
        raise PipelineError(f"accumulate={cfg.accumulate!r}; use an integer >= 1 (calls of "
                            f"step per optimizer update, default 1)")
    if cfg.transport not in ("dist", "shm"):
        raise PipelineError(f"transport={cfg.transport!r}; use 'dist' (torch.distributed: gloo "
                            f"or NCCL) or 'shm' (shared memory between CPU ranks on one host)")
    for name in ("record", "check_weights", "strict_order", "varying_shapes", "dp_overlap",
                 "shard_optimizer"):
        if not isinstance(getattr(cfg, name), bool):
            raise PipelineError(f"{name}={getattr(cfg, name)!r}; use True or False")
    for name in ("track_memory", "prepost"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), bool):
            raise PipelineError(f"{name}={getattr(cfg, name)!r}; use True, False or None")


def check_callables(*, loss_fn, optimizer) -> None:
    """``loss_fn`` must be callable; ``optimizer`` a function params -> optimizer
    (or None), not an optimizer already built."""
    if not callable(loss_fn):
        raise PipelineError(f"loss_fn={loss_fn!r} is not callable; pass a function "
                            f"(output, target) -> scalar loss, e.g. "
                            f"torch.nn.functional.cross_entropy")
    if optimizer is None:
        return
    try:
        import torch

        built = isinstance(optimizer, torch.optim.Optimizer)
    except ImportError:  # pragma: no cover - the runtime needs torch
        built = False
    if built or not callable(optimizer):
        raise PipelineError(
            f"optimizer={type(optimizer).__name__} object is not a factory: each rank builds "
            f"the optimizer of its own stages' parameters, so pass a function params -> "
            f"optimizer, e.g. lambda p: torch.optim.SGD(p, lr=0.1)")


def check_launch_options(options) -> None:
    """Raise PipelineError for a LaunchOptions field out of its range."""
    _positive_seconds("timeout_s", options.timeout_s)
    _positive_seconds("grace_s", options.grace_s, zero=True)
    _positive_seconds("deadline_s", options.deadline_s, allow_none=True)
    if options.backend not in (None, "gloo", "nccl"):
        raise PipelineError(f"backend={options.backend!r}; use 'gloo' (CPU), 'nccl' (CUDA) "
                            f"or None (pick)")
    _int_in("max_restarts", options.max_restarts, 0, MAX_RESTARTS,
            "how often a failed local run restarts all its ranks, default 0")
    if not isinstance(options.pin, bool):
        raise PipelineError(f"pin={options.pin!r}; use True (each local rank on its own cores) "
                            f"or False")
    if not isinstance(options.keep_heap, bool):
        raise PipelineError(f"keep_heap={options.keep_heap!r}; use True (each rank keeps the "
                            f"memory a step frees for the next) or False")
    t = options.threads
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 4096):
        raise PipelineError(f"threads={t!r}; use an integer in 1..4096 or None "
                            f"(CPU count / ranks)")


def check_policy(policy) -> None:
    """Raise PipelineError for a CheckpointPolicy field out of its range: a
    directory that is not a path (or is an existing file), ``every`` not an
    integer >= 1, ``keep`` outside 1..MAX_KEEP."""
    d = policy.dir
    if not isinstance(d, (str, os.PathLike)) or str(d) == "":
        raise PipelineError(f"dir={d!r}; give the directory for the checkpoints as a str or "
                            f"Path, e.g. CheckpointPolicy('ckpt', every=500)")
    if Path(d).exists() and not Path(d).is_dir():
        raise PipelineError(f"dir={str(d)!r} is a file, not a directory; give a directory "
                            f"for the step-XXXXXXXX checkpoints")
    _int_in("every", policy.every, 1, 10**9, "save after every this many steps, e.g. 500")
    _int_in("keep", policy.keep, 1, MAX_KEEP,
            "how many of the newest checkpoints to keep on disk, default 2")
