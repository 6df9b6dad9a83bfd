"""One collective pass of a Pipeline over a batch: split it into micro-batches,
check that the ranks agree, run this rank's actions, count bytes and memory,
share the loss and gather the measured timeline."""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.runtime.errors import StageError
from conveyor.runtime.execute.batching import split_batch
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.recorder import ActivationMemory, Recorder, gather_timeline
from conveyor.runtime.procs import agree
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.train import dataparallel
from conveyor.runtime.train.config import StepResult
from conveyor.runtime.train.grads import finish_local
from conveyor.runtime.train.stepend import StepEnd, share
from conveyor.runtime.transport.comm import Comm
from conveyor.schedule import Schedule, add_comms, build_schedule, validate
from conveyor.schedule.rankplan import finishing_rank

__all__ = ["run_step", "share_loss", "share", "resolve_schedule"]


def run_step(pipe, interp: Interpreter, comm: Comm, inputs, targets, batch_size,
             record, *, normalizer=None, side=None, finish: bool = False) -> StepResult:
    """One collective pass over a batch (see the module docstring). With
    ``finish``, the gradients are made final and checked after the backward
    (``conveyor.runtime.train.grads``), and the flags travel with the loss;
    the result's ``finite`` then says whether every rank's were finite."""
    t_start = time.perf_counter()
    if not interp.forward_only and not torch.is_grad_enabled():
        raise StageError(
            f"rank {pipe.ctx.rank}: step() (or forward_backward()) was called with gradients "
            f"disabled, inside torch.no_grad() or torch.inference_mode(); a training step needs "
            f"them: call it outside that block, or use evaluate() or predict() for a forward "
            f"pass only", rank=pipe.ctx.rank, same_on_every_rank=True)
    record = pipe.config.record if record is None else record
    total, targets_all = batch_size, targets
    if pipe.ctx.dp_size > 1:  # this replica's rows of the global batch
        inputs, targets, side, total, batch_size = dataparallel.replica_batch(
            pipe.ctx, inputs, targets, side, batch_size)
    data = split_batch(inputs, targets, batch_size, rank=pipe.ctx.rank,
                       stages=pipe.stages, S=pipe.schedule.S, M=pipe.schedule.M,
                       device=pipe.ctx.device, forward_only=interp.forward_only,
                       mean=pipe.config.loss_reduction == "mean")
    if total is not None and pipe.ctx.dp_size > 1:  # against the global batch
        data.aux_weights = [n / total for n in data.sizes]
        if pipe.config.loss_reduction == "mean":
            data.weights = list(data.aux_weights)
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
    compiled = pipe.compiled
    if compiled:  # dynamic shapes where they vary (execute.compiled)
        compiled.set_dynamic(pipe.config.varying_shapes or bool(data.side)
                             or len(set(data.sizes)) > 1)
        graphs0, compile0 = compiled.totals()
    # The agreement overlaps this rank's compute before its first transfer;
    # the receives of the step's end exchange are posted after it, where the
    # rank first waits.
    gate = pipe._agreement.begin(kind=agree.PREDICT if interp.forward_only else agree.STEP,
                                 step=pipe.steps, batch=sum(data.sizes))
    ending = None if interp.forward_only else StepEnd(pipe.ctx, finishing_rank(pipe.schedule))
    loss, outputs = interp.run(data, recorder=recorder, memory=memory, gate=gate,
                               idle=ending.post if ending is not None else None)
    stats = comm.counts()
    if compiled:  # compile time apart from the step's compute
        graphs1, compile1 = compiled.totals()
        stats["compiled_graphs"], stats["compile_s"] = graphs1 - graphs0, compile1 - compile0
    if memory is not None:
        stats["peak_activation_bytes"] = memory.peak
    if device.type == "cuda":
        stats["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    loss_value, finite, aux_total = None, None, 0.0
    aux = {k: float(v) for k, v in interp.aux_values.items()}  # execute.aux
    if not interp.forward_only:
        grad_bad = finish_local(pipe) if finish else 0
        bad_aux = [k for k, v in aux.items() if not math.isfinite(v)]
        loss_bad = int(finish and pipe.loop.guarding and (
            bool(bad_aux) or (loss is not None and not bool(torch.isfinite(loss)))))
        loss_value, (loss_bads, grad_bads, aux_total) = ending.share(
            loss, (loss_bad, grad_bad, sum(aux.values())))
        if finish:
            finite = loss_bads == 0 and grad_bads == 0
            note = (f"the auxiliary loss {bad_aux[0]!r} is {aux[bad_aux[0]]!r}" if bad_aux
                    else loss_value)
            pipe.loop.finished(finite, loss_bads > 0, grad_bads > 0, loss_bad, grad_bad, note)
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
                      wall_s=time.perf_counter() - t_start, output=output, finite=finite,
                      aux_loss=aux_total, aux=aux)


def share_loss(ctx, loss, last_rank: int = 0) -> float:
    """The loss of the last stage's rank (``last_rank``) on every rank: the
    step's end exchange rooted there, since in a forward-only pass that
    rank finishes last."""
    return StepEnd(ctx, max(last_rank, 0)).share(loss, ())[0]


def resolve_schedule(schedule, P: int, microbatches: int | None) -> Schedule:
    """The lowered, validated schedule a Pipeline runs: ``schedule`` (a name,
    built for P ranks and ``microbatches``, default 4, or a Schedule, whose
    own M is used). PipelineError/ScheduleError for a mismatch."""
    if isinstance(schedule, Schedule):
        sched = schedule
        if microbatches is not None and microbatches != sched.M:
            raise PipelineError(
                f"microbatches={microbatches} but schedule {sched.name!r} has "
                f"M={sched.M}; leave microbatches out when passing a Schedule")
    else:
        sched = build_schedule(schedule, P, 4 if microbatches is None else microbatches)
    if sched.P != P:
        raise PipelineError(
            f"schedule {sched.name!r} is for P={sched.P} ranks but {P} processes run; "
            f"start {sched.P} processes or build the schedule for P={P}")
    return validate(add_comms(sched))
