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
from typing import Any, Callable, Sequence, TypeAlias

import torch
from torch import nn

from conveyor.errors import ConveyorError, PipelineError
from conveyor.plan import Profile
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.recompute import apply_checkpoint, resolve_checkpoint
from conveyor.runtime.execute.stages import split_for
from conveyor.runtime.train import trainloop
from conveyor.runtime.train.checkpoint_io import layer_names, load_pipeline, save_pipeline
from conveyor.runtime.train.config import PipelineConfig, StepResult
from conveyor.runtime.train.export import export_state
from conveyor.runtime.train.planned import from_plan, named_balance
from conveyor.runtime.train.grads import finish_grads
from conveyor.runtime.train.setup import wire
from conveyor.runtime.train.run import resolve_schedule, run_step, share_loss
from conveyor.runtime.transport.comm import Comm
from conveyor.runtime.transport.group import RankContext, current_context
from conveyor.runtime.transport.mesh import resolve_mesh
from conveyor.schedule import Schedule

__all__ = ["Pipeline", "PipelineConfig", "StepResult", "microbatch_sizes"]

# A batch: a tensor or tuple of tensors, batch along dim 0 (None on ranks
# that do not read it); side inputs: {name: tensor}, cut like the batch.
Batch: TypeAlias = "torch.Tensor | tuple[torch.Tensor, ...] | None"
Side: TypeAlias = "dict[str, torch.Tensor] | None"


def _same(e: ConveyorError) -> ConveyorError:
    e.same_on_every_rank = True  # bad arguments: every rank fails alike
    return e


class Pipeline:
    """A model cut into S stages over P processes, trained one step at a time.

    Build it on every rank with the same arguments, then call ``step`` with
    the same batch on every rank.
    """

    def __init__(self, model: nn.Module | Sequence[nn.Module], *,
                 loss_fn: Callable[[Any, Any], torch.Tensor],
                 optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None,
                 schedule: str | Schedule = "1f1b", microbatches: int | None = None,
                 balance: Sequence[int] | str | None = None, ctx: RankContext | None = None,
                 config: PipelineConfig | None = None,
                 tied: bool | Sequence[Sequence[str]] | None = None,
                 before_step: Callable[["Pipeline"], None] | None = None,
                 scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                 checkpoint: str | Sequence[bool] = "none",
                 plan: str | os.PathLike | dict | None = None,
                 profile: str | os.PathLike | Profile | None = None, dp: int | None = None,
                 mesh: Any = None):
        """Cut ``model`` into the schedule's S stages and keep this rank's.

        model:        an ``nn.Sequential``, ``nn.ModuleList`` or list of layers
                      (a layer is one entry; build it with the same seed on
                      every rank). Cut by ``balance``, else the seed's rule.
        loss_fn:      ``loss_fn(output, target) -> scalar tensor`` for one
                      micro-batch; see ``config.loss_reduction``.
        optimizer:    ``optimizer(params) -> torch.optim.Optimizer``, called
                      with this rank's parameters; None: gradients only.
        schedule:     a registered name ("1f1b", "gpipe", "zbv", ...; see
                      ``conveyor.schedule_names()``) built for P = world size
                      and M = ``microbatches`` (default 4), or a Schedule
                      (its own M is used).
        balance:      layers per stage, e.g. [5, 5, 4, 4]; "time" or
                      "memory" cut by ``profile``.
        ctx:          the RankContext ``launch`` passes to your function;
                      default: the initialised process group (or P = 1).
        config:       a PipelineConfig (loss reduction, recording, timeouts,
                      transport, gradient clipping, accumulation, ...);
                      default PipelineConfig().
        tied:         None: tie a weight shared by stages on different ranks;
                      a list of name groups to declare ties; False: refuse.
        before_step:  ``fn(pipe)`` run before each optimizer update.
        scheduler:    ``fn(optimizer) -> LR scheduler``, stepped per update.
        checkpoint:   "none", "full" or one bool per stage: recompute those
                      stages' activations in the backward.
        plan:         a plan file (or its dict) from ``conveyor plan``: sets
                      schedule, M, balance and checkpoint for this model.
        profile:      a profile file or Profile from ``conveyor profile``,
                      for ``balance="time"`` or ``"memory"``.
        dp, mesh:     data parallelism: ``dp=N`` replicas over a world of
                      N x P processes (N must divide it), or ``mesh=`` a torch
                      DeviceMesh with dims ("dp", "pp"); see ``self.ctx``.

        Raises PartitionError, ScheduleError/ValidationError, PlanError or
        PipelineError naming the bad value (the same on every rank). Guide:
        https://github.com/conveyor-pp/conveyor/blob/main/docs/runtime.md
        """
        try:
            ctx = resolve_mesh(ctx or current_context(), dp=dp, mesh=mesh)
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
    def from_stages(cls, stages: Sequence[nn.Module] | Callable[[int], nn.Module], *,
                    loss_fn: Callable[[Any, Any], torch.Tensor],
                    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None,
                    schedule: str | Schedule = "1f1b", microbatches: int | None = None,
                    ctx: RankContext | None = None,
                    config: PipelineConfig | None = None,
                    tied: bool | Sequence[Sequence[str]] | None = None,
                    before_step: Callable[["Pipeline"], None] | None = None,
                    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                    dp: int | None = None, mesh: Any = None) -> "Pipeline":
        """A pipeline of stages you built: a list of S modules, or a function
        ``stage -> module`` (called only for this rank's stages, so no rank
        builds the whole model). Stage s is called as ``stage(*inputs)`` with
        the tensors stage s-1 returned. Every other argument, ``config=``
        included, as for ``Pipeline``."""
        self = cls.__new__(cls)
        try:
            ctx = resolve_mesh(ctx or current_context(), dp=dp, mesh=mesh)
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
            return resolve_schedule(schedule, P, microbatches)
        except ConveyorError as e:
            raise _same(e)

    def _setup(self, stages, sched: Schedule, ctx: RankContext, loss_fn, optimizer,
               config, extras=None) -> None:
        try:
            wire(self, stages, sched, ctx, loss_fn, optimizer, config, extras)
        except ConveyorError as e:
            raise _same(e)

    # -- public -------------------------------------------------------------------
    @property
    def P(self) -> int:
        return self.schedule.P

    @property
    def M(self) -> int:
        return self.schedule.M

    def step(self, inputs: Batch = None, targets: Batch = None, *,
             batch_size: int | None = None, record: bool | None = None,
             normalizer: float | None = None, side: Side = None) -> StepResult:
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

    def forward_backward(self, inputs: Batch = None, targets: Batch = None, *,
                         batch_size: int | None = None, record: bool | None = None,
                         normalizer: float | None = None, side: Side = None,
                         zero_grad: bool = True, sync: bool = True) -> StepResult:
        """``step`` without the optimizer update. Collective.

        Afterwards every parameter's ``.grad`` holds the gradient of the
        unsplit model on the (global) batch: the replicas' gradients are
        summed (dp > 1), tied weights' gradients summed over their ranks, a
        loss scale divided out, and every rank has checked for NaN and Inf
        (``StepResult.finite``; with nonfinite="raise" a non-finite value
        raises NonFiniteError on every rank). For your own update, a
        GradScaler-free fp16 loop, or inspection.

        With ``shard_optimizer`` the final sums are this replica's slices
        (``pipe.shards.params``), as the optimizer updates them.

        ``sync=False`` leaves all that for later, to accumulate several
        batches cheaply (as DDP's ``no_sync``): call ``finish_grads()`` (or a
        last ``forward_backward`` with sync=True) before reading the
        gradients. ``zero_grad=False`` adds to the gradients already there.
        """
        if zero_grad:
            for p in self.params:
                p.grad = None
            self._final = False
        elif self._final:
            raise _same(PipelineError(
                "forward_backward(zero_grad=False) would add to gradients that are already "
                "final (summed over replicas and ties, unscaled), and summing them again makes "
                "them wrong; pass sync=False to every call of an accumulation but the last"))
        if self.dp_sync is not None:  # the replicas' sum overlaps the last backward
            self.dp_sync.arm(sync)
        self.interp.loss_scale = self.loop.loss_scale
        res = self._run(self.interp, self.comm, inputs, targets, batch_size, record,
                        normalizer=normalizer, side=side, finish=sync)
        self._final = sync
        return res

    def finish_grads(self) -> bool:
        """Make the gradients of ``forward_backward(sync=False)`` calls final
        (see ``forward_backward``); returns whether every rank's are finite.
        Collective: every rank calls it. Raises NonFiniteError under
        nonfinite="raise" when one is not."""
        try:
            return finish_grads(self)
        except ConveyorError as e:
            raise _same(e)

    @property
    def loss_scale(self) -> float:
        """The loss scale of the next step (1.0 without loss scaling); the
        same on every rank."""
        return self.loop.loss_scale

    @property
    def skipped_steps(self) -> int:
        """Updates skipped on every rank so far (non-finite values)."""
        return self.loop.skipped

    def predict(self, inputs: Batch = None, *, batch_size: int | None = None,
                side: Side = None) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
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

    def generate(self, prompts, max_new_tokens: int, **options):
        """Continue ``prompts`` by ``max_new_tokens`` tokens each, decoding
        through the pipeline with a KV cache per lane. Collective: every
        rank calls it with the same prompts; returns the same Generation
        (tokens, lengths, sequences, stats) on every rank.

        prompts: a list of 1-D token sequences; a flat tensor with
        ``lengths=[...]``; or an (n, T) tensor, left-padded, with
        ``attention_mask=``. Options (keyword): lanes (M, default min(n, P)),
        temperature (0: greedy), top_k, top_p, seed, stop_tokens, pad_id,
        prefill_chunk, cache_budget (bytes per rank), return_logits, record.
        See ``conveyor.runtime.train.generate`` and
        https://github.com/conveyor-pp/conveyor/blob/main/docs/generation.md.

        Raises, on every rank before any decodes: PipelineError for a stage
        that cannot decode or a bad option, ContextError, CacheBudgetError,
        LanesError; while decoding, StageError / PeerFailedError as ``step``.
        """
        from conveyor.runtime.train.generate import generate
        return generate(self, prompts, max_new_tokens, **options)

    def evaluate(self, inputs: Batch = None, targets: Batch = None, *,
                 batch_size: int | None = None, normalizer: float | None = None,
                 side: Side = None) -> float:
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
        atomically. Returns the path. Guide: https://github.com/conveyor-pp/conveyor/blob/main/docs/checkpoints.md."""
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

    def export_state_dict(self, *, rename=None, dst: int = 0):
        """Collective: the model's weights under its own names (the HF model's
        for the adapter) on pipeline rank ``dst``, None elsewhere; see
        ``conveyor.runtime.train.export`` (and its ``rename``)."""
        return export_state(self, rename=rename, dst=dst)

    # -- the step (conveyor.runtime.train.run) --------------------------------------
    def _run(self, interp: Interpreter, comm: Comm, inputs, targets, batch_size,
             record, *, normalizer=None, side=None, finish: bool = False) -> StepResult:
        return run_step(self, interp, comm, inputs, targets, batch_size, record,
                        normalizer=normalizer, side=side, finish=finish)

    def _share_loss(self, loss) -> float:
        return share_loss(self.ctx, loss, self.last_rank)
