"""Measure a schedule on real processes: timelines with bytes and memory.

For benchmarks: one call starts P local processes, trains ``warmup`` steps
unrecorded (first-step costs: the shape handshake, allocator warm-up), then
records ``steps`` steps and returns their measured timelines (the simulator's
type). Each timeline's ``meta["ranks"][r]`` holds rank r's counters for that
step: sent_bytes, recv_bytes, meta_bytes, messages, peak_activation_bytes and
peak_device_bytes (CUDA).
"""

from __future__ import annotations

from typing import Callable

from conveyor.deprecation import renamed
from conveyor.runtime.procs.launcher import LaunchOptions, launch

__all__ = ["measure", "measure_rank"]


def measure_rank(ctx, make_model, make_batch, loss_fn, optimizer, schedule, M, balance,
                 steps, warmup) -> list[dict]:
    """One rank's part of ``measure``, for a rank function that runs several
    cases in one launch: builds the pipeline, runs the steps, and returns the
    recorded timelines as dicts on rank 0 (an empty list elsewhere)."""
    from conveyor.runtime.train.pipeline import Pipeline

    pipe = Pipeline(make_model(), loss_fn=loss_fn, optimizer=optimizer, schedule=schedule,
                    microbatches=M, balance=balance, ctx=ctx)
    timelines = []
    for k in range(warmup + steps):
        inputs, targets = make_batch(k)
        res = pipe.step(inputs, targets, record=k >= warmup)
        if res.timeline is not None:
            timelines.append(res.timeline.to_dict())
    return timelines


@renamed(M="microbatches")
def measure(make_model: Callable, make_batch: Callable, *, P: int,
            microbatches: int | None = None,
            schedule="1f1b", loss_fn: Callable | None = None, optimizer: Callable | None = None,
            balance=None, steps: int = 5, warmup: int = 2,
            options: LaunchOptions | None = None) -> list:
    """Run ``warmup + steps`` pipelined steps on P local processes.

    ``make_model()`` returns the model (an nn.Sequential or list of layers),
    ``make_batch(step)`` the step's ``(inputs, targets)``; both run on every
    rank and must give the same result there (seed them). ``microbatches``:
    M (default 4). They, ``loss_fn``
    (default: cross-entropy) and ``optimizer`` (a factory ``params ->
    optimizer``, default: none, gradients only) must be importable, module-level
    callables, since ranks are fresh processes. ``schedule`` is a name or a
    Schedule for P ranks.

    Returns the ``steps`` measured Timelines, in order. Raises RankFailedError
    when a rank fails.
    """
    from torch.nn.functional import cross_entropy

    from conveyor.sim.timeline import Timeline

    per_rank = launch(measure_rank, nprocs=P, options=options,
                      args=(make_model, make_batch, loss_fn or cross_entropy, optimizer,
                            schedule, microbatches, balance, steps, warmup))
    return [Timeline.from_dict(d) for d in per_rank[0]]
