"""The runtime's own time per action and per transfer, fitted to the step
times of tiny pipelines (GPipe and 1F1B of next-to-free layers) run on real
ranks; see ``conveyor.plan.overhead`` for the fit."""

from __future__ import annotations

import statistics

import torch


# The tiny pipelines ``measure_links`` times for the runtime's own work per
# action and per transfer: GPipe and 1F1B on its ranks, M micro-batches of
# one sample, 4 numbers wide, a layer per rank (see conveyor.plan.overhead).
TINY = ("gpipe", "1f1b")
TINY_M, TINY_WIDTH, TINY_STEPS, TINY_WARMUP = 8, 4, 7, 2


def tiny_steps(ctx, transport: str = "dist") -> dict[str, float]:
    """Per schedule of TINY, the median step time (rank 0's measured
    timelines) of a pipeline of tiny layers on ``ctx``'s ranks, its
    transfers over ``transport`` (PipelineConfig.transport); the schedules
    take turns, so load hits both alike. Rank 0's answer is the one to use
    (``fit_tiny``); the others return theirs, without timelines."""
    from torch import nn

    from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig

    pipes = {}
    for name in TINY:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(TINY_WIDTH, TINY_WIDTH)
                                for _ in range(max(ctx.world_size, 2))])
        pipes[name] = Pipeline(model, loss_fn=_tiny_loss, optimizer=None, schedule=name,
                               microbatches=TINY_M, ctx=ctx,
                               config=PipelineConfig(transport=transport))
    x, y = torch.randn(TINY_M, TINY_WIDTH), torch.randn(TINY_M, TINY_WIDTH)
    times: dict[str, list[float]] = {name: [] for name in TINY}
    for k in range(TINY_WARMUP + TINY_STEPS):
        for name, pipe in pipes.items():
            res = pipe.step(x, y, record=k >= TINY_WARMUP)
            if res.timeline is not None:
                times[name].append(res.timeline.step_time)
    return {name: statistics.median(t) for name, t in times.items() if t}


def fit_tiny(steps: dict[str, float], P: int,
             bandwidth: float | None = None, host: dict | None = None) -> tuple[float, float]:
    """(overhead per action, latency per transfer) in seconds from
    ``tiny_steps``'s medians on P ranks (``conveyor.plan.overhead``); on one
    rank there is no transfer and the latency is 0. ``host``: the runtime's
    time per send and receive (``transfer_times``), charged in the fit so
    that the overhead is what an action costs beyond them."""
    from conveyor.plan.overhead import fit_overhead, fit_runtime
    from conveyor.schedule import build_schedule

    bw = bandwidth or float("inf")
    flat, chain = (build_schedule(name, P, TINY_M) for name in TINY)
    if P == 1:
        return fit_overhead(chain, steps[TINY[1]], bandwidth=bw), 0.0
    return fit_runtime(flat, steps[TINY[0]], chain, steps[TINY[1]], bandwidth=bw,
                       activation_bytes=4 * TINY_WIDTH, host=host)


def _tiny_loss(out, y):
    return ((out - y) ** 2).mean()
