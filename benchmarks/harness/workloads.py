"""The two workloads as torch modules, data and the simulator's cost model.

Every framework builds its stages from the same seed, so all of them train
identical models on identical batches.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .config import BenchError, EmulatedWorkload, MLPWorkload
from conveyor.measure.emulated import EmulatedTimes, emulated_stages
from conveyor.sim.cost import CostModel

__all__ = ["build_stages", "emulated_times", "full_model", "make_batch", "loss_fn", "ideal_costs",
           "measure_stage_costs", "Workload"]

Workload = EmulatedWorkload | MLPWorkload


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error: a mean, so per-micro-batch losses average to the batch's."""
    return nn.functional.mse_loss(output, target)


def _mlp_blocks(w: MLPWorkload, seed: int) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(w.width, w.width), nn.ReLU()) for _ in range(w.layers)]


def emulated_times(workload: EmulatedWorkload, P: int, S: int) -> EmulatedTimes:
    """One stage's times when P ranks hold S stages: the rank's times over S/P."""
    f = P / S
    i = workload.backward / 2 if workload.input_grad is None else workload.input_grad
    return EmulatedTimes(workload.forward * f, workload.backward * f, i * f,
                         (workload.backward - i) * f)


def build_stages(workload: Workload, P: int, *, S: int | None = None,
                 seed: int = 0) -> list[nn.Module]:
    """S (default P) stage modules of ``workload`` for P ranks, first to last.

    The MLP's L layers are split as the seed prescribes, k = L / S contiguous
    layers per stage; BenchError when S does not divide L.
    """
    S = S or P
    if isinstance(workload, EmulatedWorkload):
        return emulated_stages(S, width=workload.width, times=emulated_times(workload, P, S),
                               layers_per_stage=workload.layers_per_stage,
                               split_backward=workload.split_backward, seed=seed)
    if workload.layers % S:
        raise BenchError(f"the MLP's {workload.layers} layers do not split evenly over "
                         f"{S} stages; pick layers divisible by {S}")
    blocks, k = _mlp_blocks(workload, seed), workload.layers // S
    return [nn.Sequential(*blocks[s * k:(s + 1) * k]) for s in range(S)]


def full_model(workload: MLPWorkload, *, seed: int = 0) -> nn.Module:
    """The whole MLP in one module, same weights as ``build_stages`` gives."""
    return nn.Sequential(*_mlp_blocks(workload, seed))


def make_batch(workload: Workload, M: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one step: (batch, width) each, float32."""
    batch = workload.batch_size(M)
    if batch < M:
        raise BenchError(f"batch {batch} is smaller than M={M}; every micro-batch needs a "
                         f"sample")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, workload.width, generator=g)
    y = torch.randn(batch, workload.width, generator=g)
    return x, y


def ideal_costs(workload: Workload, P: int, M: int, *, S: int | None = None,
                measured: dict | None = None) -> CostModel:
    """The cost model of the ideal step on S (default P) stages: configured
    times for the emulated workload, measured per-stage times
    (``measure_stage_costs``) for the MLP. Links are free: the ideal is the
    schedule's own limit."""
    act = workload.activation_bytes(M)
    if isinstance(workload, EmulatedWorkload):
        t = emulated_times(workload, P, S or P)
        i, w = t.split
        return CostModel(forward=t.forward, backward=t.backward, input_grad=i, weight_grad=w,
                         activation_bytes=act)
    if measured is None:
        raise BenchError("the MLP's ideal needs measured stage costs; call "
                         "measure_stage_costs first")
    return CostModel(forward=measured["F"], backward=measured["B"], activation_bytes=act)


def measure_stage_costs(workload: MLPWorkload, P: int, M: int, *, repeats: int = 5) -> dict:
    """Median seconds of F and B per stage on one micro-batch, run alone.

    Runs in the calling process (one thread, as each rank has); the loss is
    part of the last stage's B, as in a pipelined step.
    """
    stages = build_stages(workload, P)
    x, y = make_batch(workload, M)
    mb = workload.batch // M
    x, y = x[:mb], y[:mb]  # every stage sees (mb, width): the MLP keeps its width
    fwd, bwd = [], []
    for s, stage in enumerate(stages):
        f_t, b_t = [], []
        for _ in range(repeats + 1):  # the first run warms the allocator up
            inp = x.clone().requires_grad_(s > 0)
            t0 = time.perf_counter()
            out = stage(inp)
            t1 = time.perf_counter()
            if s == P - 1:
                loss_fn(out, y).backward()
            else:
                out.backward(torch.ones_like(out))
            t2 = time.perf_counter()
            f_t.append(t1 - t0)
            b_t.append(t2 - t1)
        stage.zero_grad(set_to_none=True)
        fwd.append(sorted(f_t[1:])[len(f_t[1:]) // 2])
        bwd.append(sorted(b_t[1:])[len(b_t[1:]) // 2])
    return {"F": fwd, "B": bwd}
