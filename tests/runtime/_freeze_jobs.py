"""Rank jobs for the frozen-peer tests (test_freeze.py, _freeze_script.py,
benchmarks/bench_faults.py): one rank freezes at a chosen point of its third
step while the others go on, and the hang watch must end every process.

Points (the frozen rank is rank 1; global rank 3, pipeline rank 1 of
replica 1, for "dp"):

    between    in the user's loop, before it calls step
    agreement  inside the step's agreement check, before its exchange
    loss       before the loss broadcast (rank 1 holds the last stage: the
               others wait for its loss)
    tie        before the tie sum (the first and last layer share a weight)
    dp         before the data-parallel gradient all-reduce (dp 2 x pp 2,
               without overlap, so the all-reduce has not started)
    save       during pipe.save, before the rank writes its file

How: "stop" stops the process (SIGSTOP: no thread runs, as under a debugger
or Ctrl-Z); "sleep" sleeps in user code (the main thread is stuck, the watch
thread runs). Each rank writes its pid to ``rank{r}.pid`` in ``out_dir``,
and the frozen rank writes the wall-clock time of the freeze to
``fault_at`` just before it freezes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train import checkpoint_io, stepend

POINTS = ("between", "agreement", "loss", "tie", "dp", "save")
HOWS = ("stop", "sleep")
AT = 2  # the step that freezes: after the first step, so timeout_s applies (not x2)

# What the hang table must name for each point: the collective the others wait in.
WAITED_IN = {
    "between": "the step agreement over ranks 0, 1",
    "agreement": "the step agreement over ranks 0, 1",
    "loss": "the loss broadcast over ranks 0, 1",
    "tie": "the tie sum all-reduce of ",
    "dp": "the data-parallel gradient all-reduce of stage 1 over ranks 1, 3",
    "save": "the checkpoint's name gather over ranks 0, 1",
}


def nprocs(point: str) -> int:
    return 4 if point == "dp" else 2


def freeze(how: str, out_dir: str) -> None:
    Path(out_dir, "fault_at").write_text(f"{time.time():.6f} {how}")
    if how == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        # Resumed by the hang report (SIGCONT) or the launcher: the watch
        # exits within a poll; until then, go no further.
    time.sleep(3600)


def _model(point: str) -> list[nn.Module]:
    torch.manual_seed(0)
    first = nn.Linear(8, 8)
    last = nn.Linear(8, 8)
    if point == "tie":
        last.weight = first.weight  # stage 0 and stage 1 share it: a tie across ranks
    return [first, nn.Tanh(), nn.Linear(8, 8), last]


def freeze_job(ctx, point: str, how: str, transport: str, out_dir: str,
               timeout_s: float) -> int:
    """Train AT + 2 steps (AT, then save, for "save"); the frozen rank freezes at
    ``point`` of step AT. Returns only if nothing froze (it never should)."""
    (Path(out_dir) / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    torch.set_num_threads(1)
    frozen = ctx.rank == (3 if point == "dp" else 1)
    pipe = Pipeline(_model(point), loss_fn=lambda o, t: ((o - t) ** 2).mean(),
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), schedule="1f1b",
                    microbatches=2, ctx=ctx, dp=2 if point == "dp" else None,
                    config=PipelineConfig(timeout_s=timeout_s, transport=transport,
                                          dp_overlap=False))
    assert pipe.hang_watched
    if frozen:
        _plant(pipe, point, how, out_dir)
    x = torch.randn(8, 8)
    steps = AT + 2 if point != "save" else AT  # the others go on to the step after
    for k in range(steps):
        if frozen and point == "between" and k == AT:
            freeze(how, out_dir)
        pipe.step(x, x)
    if point == "save":
        pipe.save(Path(out_dir) / "ckpt")
    return 0


def _at_step(pipe, fn, how: str, out_dir: str):
    """``fn`` that freezes first when called during step AT."""
    def frozen_first(*args, **kwargs):
        if pipe.steps == AT:
            freeze(how, out_dir)
        return fn(*args, **kwargs)
    return frozen_first


def _plant(pipe, point: str, how: str, out_dir: str) -> None:
    if point == "agreement":
        pipe._agreement.begin = _at_step(pipe, pipe._agreement.begin, how, out_dir)
    elif point == "loss":
        stepend.StepEnd.share = _at_step(pipe, stepend.StepEnd.share, how, out_dir)
    elif point == "tie":
        # Tie sums and the dp all-reduce run as a step's gradients are finished,
        # inside the step: this freezes in step AT + 1's (the others wait there).
        tied = pipe.loop.tied
        sync = tied.sync_grads
        tied.sync_grads = lambda: (freeze(how, out_dir) if pipe.steps == AT + 1 else None,
                                   sync())[1]
    elif point == "dp":
        finish = pipe.dp_sync.finish
        pipe.dp_sync.finish = lambda: (freeze(how, out_dir) if pipe.steps == AT + 1 else None,
                                       finish())[1]
    elif point == "save":
        def write_then_freeze(path, state):
            freeze(how, out_dir)
        checkpoint_io._write_rank_file = write_then_freeze
