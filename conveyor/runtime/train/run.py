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
from conveyor.runtime.train import dataparallel
from conveyor.runtime.train.config import StepResult
from conveyor.runtime.train.grads import finish_local
from conveyor.runtime.transport.comm import Comm

__all__ = ["run_step", "share_loss", "share"]


def run_step(pipe, interp: Interpreter, comm: Comm, inputs, targets, batch_size,
             record, *, normalizer=None, side=None, finish: bool = False) -> StepResult:
    """One collective pass over a batch (see the module docstring). With
    ``finish``, the gradients are made final and checked after the backward
    (``conveyor.runtime.train.grads``), and the flags travel with the loss;
    the result's ``finite`` then says whether every rank's were finite."""
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
            dist.barrier()
    compiled = pipe.compiled
    if compiled:  # dynamic shapes where they vary (execute.compiled)
        compiled.set_dynamic(pipe.config.varying_shapes or bool(data.side)
                             or len(set(data.sizes)) > 1)
        graphs0, compile0 = compiled.totals()
    loss, outputs = interp.run(data, recorder=recorder, memory=memory)
    stats = comm.counts()
    if compiled:  # compile time apart from the step's compute
        graphs1, compile1 = compiled.totals()
        stats["compiled_graphs"], stats["compile_s"] = graphs1 - graphs0, compile1 - compile0
    if memory is not None:
        stats["peak_activation_bytes"] = memory.peak
    if device.type == "cuda":
        stats["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    loss_value, finite = None, None
    if not interp.forward_only:
        grad_bad = finish_local(pipe) if finish else 0
        loss_bad = int(finish and pipe.loop.guarding and loss is not None
                       and not bool(torch.isfinite(loss)))
        loss_value, (loss_bads, grad_bads) = share(pipe.ctx, loss, (loss_bad, grad_bad))
        if finish:
            finite = loss_bads == 0 and grad_bads == 0
            pipe.loop.finished(finite, loss_bads > 0, grad_bads > 0, loss_bad, grad_bad,
                               loss_value)
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
                      wall_s=time.perf_counter() - t_start, output=output, finite=finite)

def share(ctx, loss, flags: tuple = ()) -> tuple[float, list[float]]:
    """The step's loss on every rank, and ``flags`` summed over every rank:
    one all-reduce over the pipeline (only the last stage's rank holds a
    loss, the others add 0, which is exact) and one over the replicas (each
    replica's loss is its share of the global batch's)."""
    if ctx.world_size == 1 and ctx.dp_size == 1:
        return float(loss), [float(f) for f in flags]
    buf = torch.zeros(1 + len(flags), dtype=torch.float64, device=ctx.device)
    if loss is not None:
        buf[0] = loss.to(ctx.device)
    if flags:
        buf[1:] = torch.tensor(flags, dtype=torch.float64)
    if ctx.world_size > 1:
        dist.all_reduce(buf, group=ctx.pp_group)
    if ctx.dp_size > 1:
        dist.all_reduce(buf, group=ctx.dp_group)
    values = buf.tolist()
    return values[0], values[1:]


def share_loss(ctx, loss, last_rank: int = -1) -> float:
    """The loss of the last stage's rank on every rank (``share`` without flags)."""
    return share(ctx, loss)[0]
