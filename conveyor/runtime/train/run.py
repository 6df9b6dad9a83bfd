"""One collective pass of a Pipeline over a batch: split it into micro-batches,
check that the ranks agree, run this rank's actions, count bytes and memory,
share the loss and gather the measured timeline."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from conveyor.runtime.execute.batching import split_batch
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.recorder import ActivationMemory, Recorder, gather_timeline
from conveyor.runtime.procs import agree
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.train import dataparallel
from conveyor.runtime.train.config import StepResult
from conveyor.runtime.transport.comm import Comm

__all__ = ["run_step", "share_loss"]


def run_step(pipe, interp: Interpreter, comm: Comm, inputs, targets, batch_size,
         record, *, normalizer=None, side=None) -> StepResult:
    t_start = time.perf_counter()
    record = pipe.config.record if record is None else record
    total, targets_all = batch_size, targets
    if pipe.ctx.dp_size > 1:  # this replica's rows of the global batch
        inputs, targets, side, total, batch_size = dataparallel.replica_batch(
            pipe.ctx, inputs, targets, side, batch_size)
    data = split_batch(inputs, targets, batch_size, rank=pipe.ctx.rank,
                       stages=pipe.stages, S=pipe.schedule.S, M=pipe.schedule.M,
                       device=pipe.ctx.device, forward_only=interp.forward_only,
                       mean=pipe.config.loss_reduction == "mean")
    if total is not None and pipe.ctx.dp_size > 1 and pipe.config.loss_reduction == "mean":
        data.weights = [n / total for n in data.sizes]  # against the global batch
    pipe._agreement.check(kind=agree.PREDICT if interp.forward_only else agree.STEP,
                          step=pipe.steps, batch=sum(data.sizes))
    pipe.loop.prepare(data, targets_all, normalizer, side)
    comm.reset_counts()
    track = pipe.config.track_memory if pipe.config.track_memory is not None else record
    memory = ActivationMemory(pipe.params) if track and not interp.forward_only else None
    device = pipe.ctx.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recorder = None
    if record:
        recorder = Recorder()
        if pipe.ctx.world_size > 1:
            # Start a recorded step together: otherwise the skew left by
            # the previous step (rank 0 gathering its timeline, say)
            # shows up as this step's bubble. (The whole world: replicas
            # meet in the gradient all-reduce, so they start together too.)
            with bounded("the recorded-step barrier", None):
                dist.barrier()
    loss, outputs = interp.run(data, recorder=recorder, memory=memory)
    stats = comm.counts()
    if memory is not None:
        stats["peak_activation_bytes"] = memory.peak
    if device.type == "cuda":
        stats["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    loss_value = None if interp.forward_only else share_loss(pipe.ctx, loss, pipe.last_rank)
    timeline = None
    if record:
        timeline = gather_timeline(
            recorder, rank=pipe.ctx.rank, world_size=pipe.ctx.world_size,
            offset=pipe.clock_offset, stats=stats, device=device, schedule=pipe.schedule,
            group=pipe.ctx.pp_group,
            meta={"step": pipe.steps, "loss": loss_value, "batch": sum(data.sizes),
                  "microbatch_sizes": data.sizes, "backend": pipe.ctx.backend,
                  "launcher": pipe.ctx.launcher})
    pipe.steps += 1
    output = None
    if outputs:
        parts = [outputs[mb] for mb in range(len(data.sizes))]
        output = (torch.cat(parts) if isinstance(parts[0], torch.Tensor)
                  else tuple(torch.cat(p) for p in zip(*parts)))
    return StepResult(loss=loss_value, timeline=timeline, stats=stats,
                      wall_s=time.perf_counter() - t_start, output=output)

def share_loss(ctx, loss, last_rank: int) -> float:
    if ctx.world_size == 1 and ctx.dp_size == 1:
        return float(loss)
    buf = (loss.to(ctx.device) if loss is not None
           else torch.zeros((), dtype=torch.float64, device=ctx.device))
    # Each wait includes reading the value: on NCCL the call only enqueues
    # the collective and the host blocks in .item().
    if ctx.world_size > 1:
        with bounded("the loss broadcast", ctx.pp_group):
            dist.broadcast(buf, group=ctx.pp_group, group_src=last_rank)
            value = float(buf.item())
    if ctx.dp_size > 1:  # each replica's loss is its share of the global batch's
        with bounded("the loss all-reduce over replicas", ctx.dp_group):
            dist.all_reduce(buf, group=ctx.dp_group)
            value = float(buf.item())
    return value
