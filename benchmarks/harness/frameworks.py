"""One training step of a pipeline, the same call for every framework.

A runner owns one rank's stages, its schedule and its optimizer, and runs one
step with ``step(x, y)``: inputs are used on the rank of the first stage,
targets on the rank of the last. Both runners do the same work per step: forward and backward of M
micro-batches, gradients averaged as one unsplit batch, one SGD update.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LR, BenchError, Unsupported
from .conveyor_runner import ConveyorRunner
from .switches import variant_sources
from .workloads import loss_fn

__all__ = ["make_runner", "stage_plan", "TorchRunner", "TORCH_SCHEDULES"]


# torch.distributed.pipelining's schedules under conveyor's names for the same
# orders (issue 9's names; interleaved-zb has no conveyor counterpart):
# name -> (class, stages per rank, placement: "loop" s -> s % P, "v" the V shape).
TORCH_SCHEDULES = {
    "gpipe": ("ScheduleGPipe", 1, "loop"),
    "1f1b": ("Schedule1F1B", 1, "loop"),
    "interleaved-1f1b": ("ScheduleInterleaved1F1B", 2, "loop"),
    "looped-bfs": ("ScheduleLoopedBFS", 2, "loop"),
    "interleaved-zb": ("ScheduleInterleavedZeroBubble", 2, "loop"),
    "zbv": ("ScheduleZBVZeroBubble", 2, "v"),
    "dualpipev": ("ScheduleDualPipeV", 2, "v"),
}


def stage_plan(framework: str, schedule: str, P: int, M: int) -> tuple[int, list[int]]:
    """(S, the stages each rank holds) of ``schedule`` in ``framework``;
    Unsupported when the framework has no such schedule or refuses P and M."""
    from conveyor.errors import ScheduleError
    from conveyor.schedule import build_schedule

    if variant_sources(framework) is not None:  # conveyor, or it with a switch off
        try:
            sched = build_schedule(schedule, P, M)
        except ScheduleError as e:
            raise Unsupported(f"conveyor: {e}") from None
        return sched.S, [list(sched.stages_of(r)) for r in range(P)]
    if framework == "torch":
        if schedule not in TORCH_SCHEDULES:
            raise Unsupported(f"torch.distributed.pipelining has no {schedule!r} schedule; "
                              f"it has {', '.join(TORCH_SCHEDULES)}")
        _, v, shape = TORCH_SCHEDULES[schedule]
        if shape == "v":
            return 2 * P, [[r, 2 * P - 1 - r] for r in range(P)]
        return v * P, [[r + k * P for k in range(v)] for r in range(P)]
    raise BenchError(f"unknown framework {framework!r}; choose conveyor or torch")


class TorchRunner:
    """torch.distributed.pipelining with manually built stages over gloo/NCCL."""

    def __init__(self, modules: dict[int, nn.Module], *, rank: int, P: int, schedule: str,
                 M: int, device: torch.device):
        import torch.distributed.pipelining as pp

        name, v, _ = TORCH_SCHEDULES[schedule]
        S = v * P
        if schedule == "1f1b" and M < P:
            # Schedule1F1B raises for this; say so instead of failing the run.
            raise Unsupported(f"torch's Schedule1F1B needs M >= P (M={M}, P={P})")
        self.first, self.last = 0 in modules, S - 1 in modules
        stages = [pp.PipelineStage(m, s, S, device) for s, m in sorted(modules.items())]
        try:
            self.schedule = getattr(pp, name)(stages[0] if v == 1 else stages,
                                              n_microbatches=M, loss_fn=loss_fn)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise Unsupported(f"torch's {name} refuses P={P}, M={M}: "
                              f"{str(e).splitlines()[0][:160]}") from None
        params = [p for m in modules.values() for p in m.parameters()]
        self.opt = torch.optim.SGD(params, lr=LR)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        args = (x,) if self.first else ()
        kwargs = {"target": y, "losses": []} if self.last else {}
        self.schedule.step(*args, return_outputs=False, **kwargs)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def make_runner(framework: str, modules: dict[int, nn.Module], *, rank: int, P: int,
                schedule: str, M: int, device: torch.device):
    """The runner of ``framework`` for this rank's stages ({stage: module});
    Unsupported when it cannot run the case."""
    if framework == "torch":
        return TorchRunner(modules, rank=rank, P=P, schedule=schedule, M=M, device=device)
    off = variant_sources(framework)
    if off is not None:
        return ConveyorRunner(modules, rank=rank, P=P, schedule=schedule, M=M, device=device,
                              off=off)
    raise BenchError(f"unknown framework {framework!r}; choose conveyor or torch")
