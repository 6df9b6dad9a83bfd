"""How a Pipeline is wired on one rank: its stages on the device, the
precision policy, the optimizer, the training loop, the transports and
comms, the interpreters for training and inference, the data-parallel
gradient sync, the clock alignment and the hang watch. Errors raised here
are the same on every rank (the caller marks them so)."""

from __future__ import annotations

import os

from conveyor.errors import PipelineError
from conveyor.runtime.checks import check_callables, check_config
from conveyor.runtime.execute.compiled import for_pipeline
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.precision import resolve
from conveyor.runtime.execute.recorder import estimate_clock_offset
from conveyor.runtime.execute.stages import parameters_of
from conveyor.runtime.procs import agree
from conveyor.runtime.procs.hang import watch as watch_hangs
from conveyor.runtime.train import dataparallel, sharding, trainloop
from conveyor.runtime.train.amp import check_master_weights
from conveyor.runtime.train.config import PipelineConfig
from conveyor.runtime.transport.comm import Comm
from conveyor.runtime.transport.shm import for_pipeline as shm_for_pipeline
from conveyor.schedule import add_comms

__all__ = ["wire", "make_comm"]


def wire(pipe, stages, sched, ctx, loss_fn, optimizer, config, extras=None) -> None:
    """Set up ``pipe`` on this rank. ``stages``: a list of all S stages or a
    dict of this rank's."""
    pipe.ctx, pipe.schedule, pipe.loss_fn = ctx, sched, loss_fn
    pipe.config = config = config or PipelineConfig()
    check_config(config)
    check_callables(loss_fn=loss_fn, optimizer=optimizer)
    if config.check_weights and not isinstance(stages, list):
        raise PipelineError(
            "check_weights=True compares the unsplit model, but from_stages was given a "
            "function that builds only this rank's stages; pass the list of all stages, "
            "or leave check_weights off")
    # Ranks must agree on schedule, model and batch: checked at each step.
    pipe._agreement = agree.Agreement(
        sched, stages if isinstance(stages, list) else None, rank=ctx.rank,
        world_size=ctx.world_size, device=ctx.device, check_weights=config.check_weights,
        group=ctx.pp_group, settings=settings_line(config), backend=ctx.backend)
    # ``stages`` is a list of all S stages or a dict of this rank's.
    pipe.stages = {s: stages[s].to(ctx.device) for s in sched.stages_of(ctx.rank)}
    pipe.policy = resolve(config.precision, config.boundary_dtype, ctx.device)
    check_master_weights(pipe.policy, pipe.stages)
    if ctx.dp_size > 1:
        dataparallel.broadcast_from_replica0(pipe.stages.values(), ctx)
    pipe.first_rank = sched.placement[0]
    pipe.last_rank = sched.placement[-1]
    pipe.params = parameters_of(pipe.stages.values())
    sharding.check_sharding(config.shard_optimizer, ctx.dp_size, optimizer)
    shard = config.shard_optimizer and bool(pipe.params)
    pipe.optimizer = (optimizer(pipe.params) if optimizer is not None and pipe.params
                      and not shard else None)
    pipe.loop = trainloop.TrainLoop(pipe, extras or trainloop.Extras())
    prepost = config.prepost if config.prepost is not None else ctx.backend != "nccl"
    # shared-memory channels for transport="shm"; None: torch.distributed
    pipe.transport = (shm_for_pipeline(ctx, sched.placement)
                      if config.transport == "shm" and sched.P > 1 else None)
    pipe.comm = make_comm(pipe)
    pipe.compiled = for_pipeline(pipe.stages, config.compile, rank=ctx.rank, schedule=sched)
    pipe.interp = Interpreter(sched, rank=ctx.rank, stages=pipe.stages, comm=pipe.comm,
                              loss_fn=loss_fn, prepost=prepost, policy=pipe.policy,
                              calls=pipe.compiled)
    # Inference gets its own comm: its outputs carry no gradient, so their
    # handshake differs from training's.
    pipe._eval_comm = make_comm(pipe)
    pipe._eval_interp = Interpreter(add_comms(sched.without_backward()), rank=ctx.rank,
                                    stages=pipe.stages, comm=pipe._eval_comm,
                                    loss_fn=loss_fn, prepost=prepost, policy=pipe.policy,
                                    calls=pipe.compiled)
    pipe.shards = None  # the optimizer over this replica's slices (sharding.py)
    if shard:
        pipe.shards = sharding.ShardedOptimizer(pipe, optimizer, overlap=config.dp_overlap)
        pipe.optimizer = pipe.shards.optimizer
        pipe.loop.attach_optimizer()
    pipe.dp_sync = pipe.shards or (dataparallel.GradSync(pipe.interp, pipe.stages, ctx,
                                                         overlap=config.dp_overlap)
                                   if ctx.dp_size > 1 else None)
    pipe.clock_offset = (estimate_clock_offset(ctx.rank, ctx.world_size, device=ctx.device,
                                               rounds=config.clock_rounds,
                                               group=ctx.pp_group)
                         if ctx.world_size > 1 else 0.0)
    pipe.steps = 0
    pipe._final = False  # the gradients are final (see forward_backward)
    pipe.hang_watched = watch_hangs(pipe)  # a hang prints every rank's position


def make_comm(pipe) -> Comm:
    strict = pipe.config.strict_order or os.environ.get("CONVEYOR_STRICT_ORDER") == "1"
    return Comm(rank=pipe.ctx.rank, placement=pipe.schedule.placement,
                device=pipe.ctx.device, timeout_s=pipe.config.timeout_s, strict_order=strict,
                group=pipe.ctx.pp_group, transport=pipe.transport,
                wire=pipe.policy.boundary)


# The options that change what a step computes or when ranks meet: every rank
# must hold them alike (the step agreement compares this line).
_AGREED = ("precision", "boundary_dtype", "loss_scale", "nonfinite", "accumulate",
           "loss_reduction", "max_grad_norm", "varying_shapes", "transport", "strict_order",
           "compile", "shard_optimizer")


def settings_line(config) -> str:
    return ", ".join(f"{name}={getattr(config, name)!r}" for name in _AGREED)
