"""Rank job for the SIGKILL-during-save trial: train and save after every step
until killed. Saving dominates each iteration (a few MiB of float64 weights
and Adam moments per rank, fsynced, against a millisecond step), so a kill at
a random moment most often lands inside a save.

Also the single-process reference the test compares a surviving checkpoint
with: the same model, data and optimizer, trained k steps without a pipeline
split.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig

WIDTH, DEPTH, BATCH, M = 192, 4, 16, 4


def model() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, WIDTH), nn.Tanh()]
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    layers.append(nn.Linear(WIDTH, 4))
    return nn.Sequential(*layers).double()


def batch(k: int):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(BATCH, 8, generator=g).double(), torch.randn(BATCH, 4, generator=g).double()


def loss_fn(out, target):
    return ((out - target) ** 2).mean()


def build(ctx=None, transport: str = "dist") -> Pipeline:
    return Pipeline(model(), loss_fn=loss_fn, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3),
                    schedule="1f1b", microbatches=M, ctx=ctx,
                    config=PipelineConfig(transport=transport))


def save_loop_job(ctx, ckpt: str, transport: str, pid_dir: str) -> None:
    """Step, save at ``ckpt``, repeat; rank 0 marks the first finished save."""
    Path(pid_dir, f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    pipe = build(ctx, transport)
    k = 0
    while True:
        pipe.step(*batch(k))
        k += 1
        pipe.save(ckpt)
        if k == 1 and ctx.rank == 0:
            Path(pid_dir, "saved").write_text("1")


def reference(steps: int) -> dict[str, torch.Tensor]:
    """The unsplit model's state after ``steps`` Adam steps on the same batches."""
    torch.set_num_threads(1)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for k in range(steps):
        x, y = batch(k)
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
