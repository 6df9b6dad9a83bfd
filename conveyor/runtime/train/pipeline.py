"""The training API: a model cut into stages, one rank per process, one call per step.

Every rank runs the same script and calls the same methods in the same order
(they are collective). A step:

1. splits the batch into M micro-batches along dim 0, sizes differing by at
   most one, the larger first (B=10, M=4: 3, 3, 2, 2);
2. runs this rank's part of the schedule (forward, loss on the last stage,
   backward), accumulating gradients; each micro-batch's loss is weighted by
   size/B (for a mean loss), so the gradients equal one unsplit step's;
3. takes the optimizer step on this rank's parameters;
4. hands the step's loss to every rank.

Inputs are read on the rank of the first stage, targets on the rank of the
last; every rank must know the batch size (pass the batch everywhere, which is
what a single script does naturally, or ``batch_size=``), because each needs
the micro-batch sizes to size its receive buffers without extra messages.

Data parallel x pipeline parallel: ``Pipeline(..., dp=N)`` on a world of
N x P processes runs N replicas of a P-rank pipeline (global rank d*P + p is
pipeline rank p of replica d, see ``conveyor.runtime.transport.mesh``). Every rank
still passes the global batch; replica d trains on its slice of the rows
and the gradients are summed over the replicas before the update
(``conveyor.runtime.train.dataparallel``), so a step equals one unsplit step on the
global batch.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from conveyor.errors import ConveyorError, PipelineError
from conveyor.runtime.checks import check_callables, check_config
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.recompute import apply_checkpoint, resolve_checkpoint
from conveyor.runtime.execute.recorder import estimate_clock_offset
from conveyor.runtime.execute.stages import parameters_of, split_for
from conveyor.runtime.procs import agree
from conveyor.runtime.procs.hang import watch as watch_hangs
from conveyor.runtime.train import dataparallel, sharding, trainloop
from conveyor.runtime.train.checkpoint_io import layer_names, load_pipeline, save_pipeline
from conveyor.runtime.train.config import PipelineConfig, StepResult
from conveyor.runtime.train.planned import from_plan, named_balance
from conveyor.runtime.train.run import run_step, share_loss
from conveyor.runtime.transport.comm import Comm
from conveyor.runtime.transport.group import RankContext
from conveyor.runtime.transport.mesh import resolve_mesh
from conveyor.schedule import Schedule, add_comms, build_schedule, validate

__all__ = ["Pipeline", "PipelineConfig", "StepResult", "microbatch_sizes"]


def _context() -> RankContext:
    if not dist.is_initialized():
        return RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                           backend="none", launcher="single")
    backend = dist.get_backend()
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    return RankContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                       device=device, backend=backend, launcher="external")


def _same(e: ConveyorError) -> ConveyorError:
    e.same_on_every_rank = True  # bad arguments: every rank fails alike
    return e


class Pipeline:
    """A model cut into S stages over P processes, trained one step at a time.

    Build it on every rank with the same arguments, then call ``step`` with
    the same batch on every rank.
    """

    def __init__(self, model, *, loss_fn: Callable, optimizer: Callable | None,
                 schedule: str | Schedule = "1f1b", microbatches: int | None = None,
                 balance: Sequence[int] | str | None = None, ctx: RankContext | None = None,
                 config: PipelineConfig | None = None, tied=None,
                 before_step: Callable | None = None, scheduler: Callable | None = None,
                 checkpoint="none", plan=None, profile=None, dp: int | None = None,
                 mesh=None):
        """``model``: an ``nn.Sequential`` or list of layers; it is cut by
        ``balance`` (or evenly, see ``conveyor.partition``) into the schedule's
        S stages, and this rank keeps its own. ``loss_fn(output, target)``
        returns a scalar. ``optimizer(params)`` builds the optimizer of this
        rank's parameters (None: no update, gradients only). ``schedule``: a
        registered name ("naive", "gpipe", "1f1b", ...) built for P = world
        size and M = ``microbatches`` (default 4; "naive" always uses M=1), or
        a Schedule (e.g. loaded from a file), whose own M is used. ``ctx``
        defaults to the initialised process group (or one process without
        one); ``launch`` passes it to your function.

        ``tied``, ``before_step``, ``scheduler``: see ``conveyor.runtime.train.trainloop``
        (tied weights across ranks, a hook before each update, an LR scheduler).

        Raises PartitionError, ScheduleError/ValidationError or PipelineError
        naming the bad value (the same on every rank).

        Planning (docs/planning.md): ``balance="time"`` or ``"memory"`` cuts by
        a ``profile`` (file or Profile from ``conveyor profile``);
        ``checkpoint="none" | "full" | [bool per stage]`` recomputes stages'
        activations in the backward; ``plan="plan.json"`` (from ``conveyor
        plan``) sets schedule, M, balance and checkpointing at once.

        Data parallelism: ``dp=N`` runs N replicas of the pipeline over a world
        of N x P processes (N must divide the world size), or ``mesh=`` a torch
        DeviceMesh with dims ("dp", "pp"); see the module docstring.
        """
        try:
            ctx = resolve_mesh(ctx or _context(), dp=dp, mesh=mesh)
            if plan is not None:
                schedule, balance, checkpoint = from_plan(plan, model, config)
                microbatches = None
            sched = self._resolve_schedule(schedule, ctx.world_size, microbatches)
            balance = named_balance(balance, model, sched.S, profile,
                                    placement=sched.placement)
            stages = apply_checkpoint(split_for(model, sched, balance),
                                      resolve_checkpoint(checkpoint, sched.S))
        except ConveyorError as e:
            raise _same(e)
        self._setup(stages, sched, ctx, loss_fn, optimizer, config,
                    trainloop.Extras(tied, before_step, scheduler, stages))
        self.layer_names = layer_names(model, sched.S, balance)  # checkpoint keys

    @classmethod
    def from_stages(cls, stages, *, loss_fn: Callable, optimizer: Callable | None,
                    schedule: str | Schedule = "1f1b", microbatches: int | None = None,
                    ctx: RankContext | None = None,
                    config: PipelineConfig | None = None, tied=None,
                    before_step: Callable | None = None,
                    scheduler: Callable | None = None, dp: int | None = None,
                    mesh=None) -> "Pipeline":
        """A pipeline of stages you built: a list of S modules, or a function
        ``stage -> module`` (called only for this rank's stages, so no rank
        builds the whole model). Stage s is called as ``stage(*inputs)`` with
        the tensors stage s-1 returned. ``dp``, ``mesh``: as for ``Pipeline``."""
        self = cls.__new__(cls)
        try:
            ctx = resolve_mesh(ctx or _context(), dp=dp, mesh=mesh)
        except ConveyorError as e:
            raise _same(e)
        sched = self._resolve_schedule(schedule, ctx.world_size, microbatches)
        every = None  # all S stages, when given: tied weights are then detected
        if callable(stages) and not isinstance(stages, torch.nn.Module):
            built = {s: stages(s) for s in sched.stages_of(ctx.rank)}
        else:
            stages = list(stages)
            if len(stages) != sched.S:
                raise _same(PipelineError(
                    f"{len(stages)} stages given but schedule {sched.name!r} has {sched.S}; "
                    f"give one module per stage"))
            built, every = {s: stages[s] for s in sched.stages_of(ctx.rank)}, stages
        self._setup(built, sched, ctx, loss_fn, optimizer, config,
                    trainloop.Extras(tied, before_step, scheduler, every))
        return self

    @staticmethod
    def _resolve_schedule(schedule, P: int, microbatches: int | None) -> Schedule:
        try:
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
        except ConveyorError as e:
            raise _same(e)

    def _setup(self, stages, sched: Schedule, ctx: RankContext, loss_fn, optimizer,
               config, extras=None) -> None:
        self.ctx, self.schedule, self.loss_fn = ctx, sched, loss_fn
        self.config = config = config or PipelineConfig()
        try:
            check_config(config)
            check_callables(loss_fn=loss_fn, optimizer=optimizer)
        except ConveyorError as e:
            raise _same(e)
        if config.check_weights and not isinstance(stages, list):
            raise _same(PipelineError(
                "check_weights=True compares the unsplit model, but from_stages was given a "
                "function that builds only this rank's stages; pass the list of all stages, "
                "or leave check_weights off"))
        # Ranks must agree on schedule, model and batch: checked at each step.
        self._agreement = agree.Agreement(
            sched, stages if isinstance(stages, list) else None, rank=ctx.rank,
            world_size=ctx.world_size, device=ctx.device, check_weights=config.check_weights,
            group=ctx.pp_group)
        # ``stages`` is a list of all S stages or a dict of this rank's.
        self.stages = {s: stages[s].to(ctx.device) for s in sched.stages_of(ctx.rank)}
        if ctx.dp_size > 1:
            dataparallel.broadcast_from_replica0(self.stages.values(), ctx)
        self.first_rank = sched.placement[0]
        self.last_rank = sched.placement[-1]
        self.params = parameters_of(self.stages.values())
        try:
            sharding.check_sharding(config.shard_optimizer, ctx.dp_size, optimizer)
        except ConveyorError as e:
            raise _same(e)
        shard = config.shard_optimizer and bool(self.params)
        self.optimizer = optimizer(self.params) if optimizer is not None and self.params \
            and not shard else None
        self.loop = trainloop.TrainLoop(self, extras or trainloop.Extras())
        prepost = config.prepost if config.prepost is not None else ctx.backend != "nccl"
        self.transport = self._transport()
        self.comm = self._comm()
        self.interp = Interpreter(sched, rank=ctx.rank, stages=self.stages, comm=self.comm,
                                  loss_fn=loss_fn, prepost=prepost)
        # Inference gets its own comm: its outputs carry no gradient, so their
        # handshake differs from training's.
        self._eval_comm = self._comm()
        self._eval_interp = Interpreter(add_comms(sched.without_backward()), rank=ctx.rank,
                                        stages=self.stages, comm=self._eval_comm,
                                        loss_fn=loss_fn, prepost=prepost)
        self.shards = None  # the optimizer over this replica's slices (sharding.py)
        if shard:
            self.shards = sharding.ShardedOptimizer(self, optimizer, overlap=config.dp_overlap)
            self.optimizer = self.shards.optimizer
            self.loop.attach_optimizer()
        self.dp_sync = self.shards or (dataparallel.GradSync(self.interp, self.stages, ctx,
                                                             overlap=config.dp_overlap)
                                       if ctx.dp_size > 1 else None)
        self.clock_offset = (estimate_clock_offset(ctx.rank, ctx.world_size, device=ctx.device,
                                                   rounds=config.clock_rounds,
                                                   group=ctx.pp_group)
                             if ctx.world_size > 1 else 0.0)
        self.steps = 0
        self.hang_watched = watch_hangs(self)  # a hang prints every rank's position

    def _comm(self) -> Comm:
        strict = self.config.strict_order or os.environ.get("CONVEYOR_STRICT_ORDER") == "1"
        return Comm(rank=self.ctx.rank, placement=self.schedule.placement,
                    device=self.ctx.device, timeout_s=self.config.timeout_s, strict_order=strict,
                    group=self.ctx.pp_group, transport=self.transport)

    def _transport(self):
        """The shared-memory channels of ``transport="shm"`` (one set for the
        training and the inference comm: their steps never overlap, and
        messages pair by tag in order); None for torch.distributed."""
        if self.config.transport != "shm" or self.schedule.P == 1:
            return None
        from conveyor.runtime.transport.shm import ShmTransport

        if self.ctx.device.type != "cpu":
            raise _same(PipelineError(
                f"transport='shm' moves CPU tensors, but this rank runs on {self.ctx.device}; "
                f"use transport='dist' (NCCL) there"))
        pl = self.schedule.placement
        pairs = {(a, b) for s in range(len(pl) - 1) for a, b in
                 ((pl[s], pl[s + 1]), (pl[s + 1], pl[s])) if a != b}
        try:
            return ShmTransport(rank=self.ctx.rank, pairs=pairs, group=self.ctx.pp_group)
        except RuntimeError as e:
            raise PipelineError(str(e)) from None

    # -- public -------------------------------------------------------------------
    @property
    def P(self) -> int:
        return self.schedule.P

    @property
    def M(self) -> int:
        return self.schedule.M

    def step(self, inputs=None, targets=None, *, batch_size: int | None = None,
             record: bool | None = None, normalizer=None, side=None) -> StepResult:
        """One training step: forward, backward and optimizer update.

        Collective: every rank calls it. ``inputs`` (a tensor or tuple of
        tensors, batch along dim 0) is needed on the first stage's rank,
        ``targets`` on the last stage's; every rank needs the batch size.
        Returns a StepResult; its loss is the same on every rank.
        ``normalizer``: the whole batch's loss denominator (e.g. its token
        count) for a ``loss_fn`` that sums; ``side``: {name: tensor} passed to
        every stage as keyword arguments (see ``conveyor.runtime.train.trainloop``).

        Raises StageError naming the rank, stage and micro-batch when user code
        or input fails, PeerFailedError when another rank failed.
        """
        return self.loop.step(inputs, targets, batch_size=batch_size, record=record,
                              normalizer=normalizer, side=side)

    def forward_backward(self, inputs=None, targets=None, *, batch_size: int | None = None,
                         record: bool | None = None, normalizer=None, side=None,
                         zero_grad: bool = True) -> StepResult:
        """``step`` without the optimizer update: the parameters' ``.grad`` hold
        the step's gradients afterwards (for checks, or your own update); tied
        weights' gradients are not yet summed, nor (dp > 1) the replicas'
        (``step`` does both).
        ``zero_grad=False`` adds to the gradients already there."""
        if zero_grad:
            for p in self.params:
                p.grad = None
        return self._run(self.interp, self.comm, inputs, targets, batch_size, record,
                         normalizer=normalizer, side=side)

    def predict(self, inputs=None, *, batch_size: int | None = None, side=None):
        """Forward only, in micro-batches, with the stages in eval mode and no
        gradients. Collective. Returns the last stage's output for the whole
        batch (micro-batch outputs joined along dim 0) on the last stage's
        rank, None elsewhere."""
        modes = {s: m.training for s, m in self.stages.items()}
        for m in self.stages.values():
            m.eval()
        try:
            res = self._run(self._eval_interp, self._eval_comm, inputs, None, batch_size, False,
                            side=side)
        finally:
            for s, m in self.stages.items():
                m.train(modes[s])
        return res.output

    def evaluate(self, inputs=None, targets=None, *, batch_size: int | None = None,
                 normalizer=None, side=None) -> float:
        """The batch's loss, forward only (eval mode, no update). Collective;
        returns the same loss on every rank."""
        return self.loop.evaluate(inputs, targets, batch_size=batch_size,
                                  normalizer=normalizer, side=side)

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the gradient of the whole pipeline to ``max_norm`` (as
        ``torch.nn.utils.clip_grad_norm_`` on the unsplit model); returns the
        norm before clipping. Collective: call it on every rank, e.g. from
        ``before_step``."""
        return self.loop.clip(max_norm)
    # -- checkpoints (conveyor.runtime.train.checkpoint_io) -----------------------------------
    layer_names: dict[int, list[str]] | None = None  # None: built by from_stages

    def save(self, path, *, scheduler=None):
        """Collective: write a checkpoint at directory ``path`` (model keyed by the
        unsplit model's names, optimizer, ``scheduler``, step count, RNG),
        atomically. Returns the path. See docs/checkpoints.md."""
        if scheduler is None:
            scheduler = self.loop.scheduler  # the one Pipeline(scheduler=...) built, if any
        return save_pipeline(self, path, scheduler=scheduler)

    def load(self, path, *, scheduler=None) -> dict:
        """Load a checkpoint saved at any P into this rank's stages, optimizer,
        ``scheduler``, step count and (same P, dp=1 only) RNG. Every rank
        calls it; with dp > 1 every replica loads (any saved dp and P).
        Returns {"step", "saved_P", "rng_restored"}; raises CheckpointError."""
        if scheduler is None:
            scheduler = self.loop.scheduler
        if self.shards is not None:
            self.shards.wait()  # a late all-gather must not overwrite what is loaded
        return load_pipeline(self, path, scheduler=scheduler)

    # -- the step (conveyor.runtime.train.run) --------------------------------------
    def _run(self, interp: Interpreter, comm: Comm, inputs, targets, batch_size,
             record, *, normalizer=None, side=None) -> StepResult:
        return run_step(self, interp, comm, inputs, targets, batch_size, record,
                        normalizer=normalizer, side=side)

    def _share_loss(self, loss) -> float:
        return share_loss(self.ctx, loss, self.last_rank)
