"""One training step of a pipeline, the same call for every framework.

A runner owns one rank's stage, its schedule and its optimizer, and runs one
step with ``step(x, y)``: inputs are used on the first rank, targets on the
last. Both runners do the same work per step: forward and backward of M
micro-batches, gradients averaged as one unsplit batch, one SGD update.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LR, BenchError, Unsupported
from .conveyor_runner import ConveyorRunner
from .workloads import loss_fn

__all__ = ["make_runner", "TorchRunner"]


class TorchRunner:
    """torch.distributed.pipelining with manually built stages over gloo/NCCL."""

    def __init__(self, module: nn.Module, *, rank: int, P: int, schedule: str, M: int,
                 device: torch.device):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        classes = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
        if schedule not in classes:
            raise Unsupported(f"torch.distributed.pipelining has no {schedule!r} schedule "
                              f"in this benchmark; use gpipe or 1f1b")
        if schedule == "1f1b" and M < P:
            # Schedule1F1B raises for this; say so instead of failing the run.
            raise Unsupported(f"torch's Schedule1F1B needs M >= P (M={M}, P={P})")
        self.rank, self.P = rank, P
        self.stage = PipelineStage(module, rank, P, device)
        self.schedule = classes[schedule](self.stage, n_microbatches=M, loss_fn=loss_fn)
        self.opt = torch.optim.SGD(module.parameters(), lr=LR)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        args = (x,) if self.rank == 0 else ()
        kwargs = {"target": y, "losses": []} if self.rank == self.P - 1 else {}
        self.schedule.step(*args, return_outputs=False, **kwargs)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def make_runner(framework: str, module: nn.Module, *, rank: int, P: int, schedule: str,
                M: int, device: torch.device):
    """The runner of ``framework`` for this rank; Unsupported when it cannot run the case."""
    if framework == "torch":
        return TorchRunner(module, rank=rank, P=P, schedule=schedule, M=M, device=device)
    if framework == "conveyor":
        return ConveyorRunner(module, rank=rank, P=P, schedule=schedule, M=M, device=device)
    raise BenchError(f"unknown framework {framework!r}; choose conveyor or torch")
