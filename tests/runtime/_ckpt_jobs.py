"""Rank jobs for the checkpoint tests: train, save, resume, reshard, crash mid-save.

Every job trains ``_models.mlp`` (float64, Adam + StepLR) on batches that depend
only on the step number, so runs at different P see the same data. With
``dropout`` a Dropout layer draws from the rank's RNG, so only a resume that
restores the RNG reproduces the losses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline
from conveyor.runtime.train import checkpoint_io
from tests.runtime import _models

BATCH, M, DEPTH = 12, 4, 3


def model(cfg: dict, seed: int = 0) -> nn.Sequential:
    m = _models.mlp(DEPTH, seed=seed)  # 7 layers
    if cfg.get("dropout"):
        layers = list(m)
        layers.insert(2, nn.Dropout(0.3))
        m = nn.Sequential(*layers)
    return m


def build(cfg: dict, ctx, seed: int = 0):
    pipe = Pipeline(model(cfg, seed), loss_fn=_models.loss_fn,
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=0.02),
                    schedule=cfg["schedule"], microbatches=M, ctx=ctx)
    sched = torch.optim.lr_scheduler.StepLR(pipe.optimizer, step_size=4, gamma=0.5)
    return pipe, sched


def train(pipe, sched, first: int, n: int) -> list[float]:
    losses = []
    for k in range(first, first + n):
        x, y = _models.batch(BATCH, seed=k + 1)
        losses.append(pipe.step(x, y).loss)
        sched.step()
    return losses


def weights(pipe) -> dict[str, list]:
    """This rank's weights under the unsplit model's names, as nested lists of
    Python floats (exact for float64): tensors returned through the
    launcher's pipe travel as shared memory that dies with the rank."""
    names = checkpoint_io.stage_names(pipe)
    return {names[s][k]: v.tolist() for s, m in pipe.stages.items()
            for k, v in m.state_dict().items()}


def train_save_job(ctx, cfgs: list[dict]) -> list[dict]:
    """Per cfg: train 10 steps, save at cfg["dir"], train 10 more."""
    out = []
    for cfg in cfgs:
        torch.manual_seed(1000 + ctx.rank)
        pipe, sched = build(cfg, ctx)
        first = train(pipe, sched, 0, 10)
        at_save = weights(pipe)
        pipe.save(cfg["dir"], scheduler=sched)
        later = train(pipe, sched, 10, 10)
        out.append({"losses": first + later, "at_save": at_save, "final": weights(pipe),
                    "lr": sched.get_last_lr()})
    return out


def resume_job(ctx, cfgs: list[dict]) -> list[dict]:
    """Per cfg: a pipeline from other initial weights and another RNG seed
    loads cfg["dir"] and trains 10 steps."""
    out = []
    for cfg in cfgs:
        torch.manual_seed(7)
        pipe, sched = build(cfg, ctx, seed=5)
        info = pipe.load(cfg["dir"], scheduler=sched)
        losses = train(pipe, sched, info["step"], 10)
        out.append({"losses": losses, "final": weights(pipe), "info": info,
                    "steps": pipe.steps, "lr": sched.get_last_lr()})
    return out


def reshard_then_crash_job(ctx, src: str, out_dir: str, crash_dir: str) -> None:
    """Load ``src`` (saved at another P) and train 10 steps; write the result
    to out_dir. Then save at crash_dir, train a step, and save again there:
    rank 1 writes half its file and dies. The launch fails; the test reads
    what is left."""
    pipe, sched = build({"schedule": "1f1b"}, ctx, seed=5)
    info = pipe.load(src, scheduler=sched)
    losses = train(pipe, sched, info["step"], 10)
    pipe.save(crash_dir, scheduler=sched)
    torch.save({"losses": losses, "info": info, "saved": weights(pipe)},
               Path(out_dir) / f"rank{ctx.rank}.pt")
    train(pipe, sched, 20, 1)
    if ctx.rank == 1:
        def half_then_die(path, state):
            with open(path, "wb") as f:
                f.write(b"\x00" * 100)
            os._exit(9)
        checkpoint_io._write_rank_file = half_then_die
    pipe.save(crash_dir, scheduler=sched)


# -- hang forensics (not checkpoints, but the same kind of rank job) ----------------

class SleepOnMb3(nn.Module):
    """Identity that sleeps "forever" in its forward of micro-batch 3."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        mb, self.calls = self.calls, self.calls + 1
        if mb == 3:
            time.sleep(3600)
        return x


def hang_job(ctx, pid_dir: str, timeout_s: float) -> None:
    """P=4, 1f1b, M=8: stage 2 sleeps in its forward of micro-batch 3."""
    from conveyor.runtime import PipelineConfig
    (Path(pid_dir) / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(4)]
    layers.insert(3, SleepOnMb3())  # balance [1, 1, 2, 1]: the second layer of stage 2
    pipe = Pipeline(layers, loss_fn=lambda o, t: ((o - t) ** 2).mean(), optimizer=None,
                    schedule="1f1b", microbatches=8, balance=[1, 1, 2, 1], ctx=ctx,
                    config=PipelineConfig(timeout_s=timeout_s))
    assert pipe.hang_watched
    x = torch.randn(16, 4)
    pipe.step(x, x)
