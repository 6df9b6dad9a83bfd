"""What a training loop does around the pipelined step, across all ranks.

``Pipeline.step`` runs forward and backward (``forward_backward``); the last
call of an accumulation window (``PipelineConfig.accumulate``) makes the
gradients final there (the replicas' sum, tied weights' sums, unscaling, the
non-finite check: ``conveyor.runtime.train.grads``). Then, on that call:

1. divides every gradient by ``accumulate`` (the mean over the window);
2. if any rank saw a NaN or Inf, skips the update on every rank (or, with
   ``nonfinite="raise"``, every rank has already raised);
3. clips the global gradient norm (``PipelineConfig.max_grad_norm``);
4. calls ``before_step(pipe)``, your hook (clip, log, inspect gradients);
5. steps the optimizer, then the LR scheduler (``scheduler(optimizer)``
   builds it, e.g. ``lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)``),
   and updates the loss scale (``conveyor.runtime.train.amp``).

Side inputs (``step(..., side={"attention_mask": m})``) are cut into
micro-batches on every rank from the batch each rank already holds and given
to every stage as keyword arguments: nothing about them crosses a cut, so
they cost no bytes (the traffic test counts this). A token-level loss gets
its normaliser once per batch (``conveyor.runtime.train.losses``).

Global gradient-norm clipping: the norm is that of the whole model's
gradient, so each rank sums the squares of its own gradients (a tied weight
counted once, on its first owner), the ranks add the sums, and every rank
scales by the same factor: the same as ``clip_grad_norm_`` on the unsplit model.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from conveyor.errors import ConveyorError, PipelineError
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.train.amp import Scaler, resolve_scale
from conveyor.runtime.train.grads import raise_nonfinite
from conveyor.runtime.train.losses import batch_normalizer
from conveyor.runtime.train.tied import (
    TiedParams, check_undeclared, find_shared, fingerprints, resolve_ties,
)

__all__ = ["global_grad_norm", "clip_grad_norm", "Extras", "TrainLoop"]


def global_grad_norm(counted: Sequence[torch.nn.Parameter], *, world_size: int,
                     device: torch.device, group=None) -> float:
    """L2 norm of the gradient of the whole pipeline. Collective over the
    pipeline's ``group`` (None: all ranks): every rank passes its parameters
    to count (see ``TiedParams.counted_here``). With data parallelism the
    gradients are already summed over the replicas, so each replica's
    pipeline computes the same norm on its own."""
    sq = torch.zeros((), dtype=torch.float64, device=device)
    for p in counted:
        if p.grad is not None:
            sq += p.grad.detach().to(torch.float64).pow(2).sum()
    if world_size > 1:
        with bounded("the gradient-norm all-reduce", group):
            dist.all_reduce(sq, group=group)
    return math.sqrt(float(sq))


def clip_grad_norm(params: Sequence[torch.nn.Parameter], counted, max_norm: float, *,
                   world_size: int, device: torch.device, group=None) -> float:
    """Scale every local gradient so the global norm is at most ``max_norm``
    (torch's rule: factor max_norm / (norm + 1e-6), only when below 1).
    Returns the norm before clipping. Collective."""
    norm = global_grad_norm(counted, world_size=world_size, device=device, group=group)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.detach().mul_(coef)
    return norm


@dataclass
class Extras:
    """The Pipeline arguments this module serves.

    tied:        None: detect shared parameters and tie them across ranks;
                 a list of groups of stage-qualified names to tie as well;
                 False: a parameter shared across ranks is an error.
    before_step: ``fn(pipe)`` called before each optimizer update.
    scheduler:   ``fn(optimizer) -> LR scheduler``, stepped after each update.
    every:       all S stages when this rank can see them (to detect sharing).
    """

    tied: Any = None
    before_step: Callable | None = None
    scheduler: Callable | None = None
    every: Sequence | None = None


class TrainLoop:
    """The update half of ``Pipeline.step``, plus ``evaluate`` and clipping."""

    def __init__(self, pipe, extras: Extras):
        self._pipe = weakref.ref(pipe)  # the pipeline owns this loop: no cycle back
        self.extras = extras
        k = pipe.config.accumulate
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _same(PipelineError(f"accumulate={k!r}; use a positive number of steps "
                                      f"per update (1: update every step)"))
        tied = extras.tied
        try:
            shared = (find_shared([m for m in extras.every]) if extras.every is not None
                      else None)
            ties = resolve_ties(S=pipe.schedule.S, placement=pipe.schedule.placement,
                                local=pipe.stages, declared=tied or None, shared=shared,
                                allow=tied is not False)
            if extras.every is None and tied != [] and pipe.ctx.world_size > 1:
                # Stages built apart: a tie cannot be seen by identity, so look
                # for weights with equal values on different ranks.
                got: list = [None] * pipe.ctx.world_size
                dist.all_gather_object(got, fingerprints(pipe.stages), group=pipe.ctx.pp_group)
                check_undeclared(got, pipe.schedule.placement, ties)
        except ConveyorError as e:
            raise _same(e)
        self.tied = TiedParams(ties, rank=pipe.ctx.rank, world_size=pipe.ctx.world_size,
                               dp_rank=pipe.ctx.dp_rank, dp_size=pipe.ctx.dp_size)
        self.counted = self.tied.counted_here(pipe.params)
        self.attach_optimizer()
        self.micro = 0  # calls of step in the current accumulation window
        spec = resolve_scale(pipe.config.loss_scale, pipe.config.precision)
        self.scaler = Scaler(spec) if spec is not None else None
        self.finite = True  # the last finished gradients' verdict, the same on every rank
        self.skipped = 0    # updates skipped on every rank

    @property
    def loss_scale(self) -> float:
        """What each micro-batch's loss is multiplied by before its backward."""
        return self.scaler.scale if self.scaler is not None else 1.0

    def amp_state(self) -> dict:
        """What a checkpoint keeps of the loss scale and the guard."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "skipped": self.skipped}

    def load_amp_state(self, state: dict | None) -> None:
        """Resume the scale where the checkpoint left it (a checkpoint without
        one, or saved without scaling, leaves this pipeline's initial scale)."""
        if not state:
            return
        self.skipped = int(state.get("skipped", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    @property
    def guarding(self) -> bool:
        """Whether finished gradients are checked for NaN and Inf."""
        return self.scaler is not None or self.pipe.config.nonfinite != "off"

    def finished(self, finite: bool, any_loss_bad: bool, any_grad_bad: bool,
                 my_loss_bad: bool, my_grad_bad: bool, loss_value) -> None:
        """The verdict on finished gradients (the same on every rank): kept
        for the update; under nonfinite="raise", every rank raises, except for
        an overflow of scaled gradients, which the loss scale handles."""
        self.finite = finite
        if finite or self.pipe.config.nonfinite != "raise":
            return
        if self.scaler is not None and not any_loss_bad:
            return  # an overflow: the update is skipped and the scale shrinks
        raise_nonfinite(self.pipe, my_loss_bad, my_grad_bad, loss_value)

    def attach_optimizer(self) -> None:
        """Build the LR scheduler for ``pipe.optimizer`` (again, once a sharded
        optimizer replaces it)."""
        opt, make = self.pipe.optimizer, self.extras.scheduler
        self.scheduler = make(opt) if make is not None and opt is not None else None

    @property
    def pipe(self):
        return self._pipe()

    def step(self, inputs, targets, **kw):
        last = self.micro + 1 == self.pipe.config.accumulate
        res = self.pipe.forward_backward(inputs, targets, zero_grad=self.micro == 0,
                                         sync=last, **kw)
        self.micro += 1
        if last:
            self.micro = 0
            res.skipped = not self.update()
        return res

    def update(self) -> bool:
        """The update half of a step, on final gradients; False when it was
        skipped (on every rank alike)."""
        pipe = self.pipe
        shards = pipe.shards  # sharded optimizer: the update works on this replica's slices
        k = pipe.config.accumulate
        if k > 1:
            for p in (pipe.params if shards is None else shards.params):
                if p.grad is not None:
                    p.grad.div_(k)
        if not self.finite:
            for p in pipe.params:
                p.grad = None
            self.skipped += 1
            if self.scaler is not None:
                self.scaler.update(False)
            return False
        if pipe.config.max_grad_norm is not None:
            self.clip(pipe.config.max_grad_norm)
        if self.extras.before_step is not None:
            self.extras.before_step(pipe)
        if pipe.optimizer is not None:
            pipe.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        if self.scaler is not None:
            self.scaler.update(True)
        return True

    def clip(self, max_norm: float) -> float:
        ctx, shards = self.pipe.ctx, self.pipe.shards
        if shards is not None:  # slices of the summed gradient: sum over every rank
            return clip_grad_norm(shards.params, shards.counted, max_norm,
                                  world_size=ctx.global_size, device=ctx.device)
        return clip_grad_norm(self.pipe.params, self.counted, max_norm,
                              world_size=ctx.world_size, device=ctx.device, group=ctx.pp_group)

    def prepare(self, data, targets, normalizer, side) -> None:
        """Fill in a step's per-batch normaliser weights and side inputs."""
        if data.targets is not None:
            norm = batch_normalizer(self.pipe.loss_fn, targets, normalizer)
            if norm is not None:
                data.weights = [1.0 / norm] * len(data.sizes)
        if side:
            data.side = split_side(side, data.sizes, self.pipe.ctx.device)
            # Every rank sees the side inputs, so their shapes (the sequence
            # length) join the handshake key: a new length gets a handshake,
            # a known one none.
            data.keys = [(n, *(tuple(v.shape[1:]) for v in kw.values()))
                         for n, kw in zip(data.sizes, data.side)]
        if self.pipe.config.varying_shapes:
            # Keys -1, -2, ... (one per micro-batch, distinct from sizes), forgotten
            # before each step: every micro-batch is preceded by its handshake.
            data.keys = [-(mb + 1) for mb in range(len(data.sizes))]
            for comm in (self.pipe.comm, self.pipe._eval_comm):
                for known in (comm.meta_in, comm.meta_out):
                    for k in [k for k in known if isinstance(k[1], int) and k[1] < 0]:
                        del known[k]

    def evaluate(self, inputs, targets, *, batch_size, normalizer, side) -> float:
        pipe = self.pipe
        out = pipe.predict(inputs, batch_size=batch_size, side=side)
        loss = None
        if out is not None:  # the last stage's rank
            if targets is None:
                raise PipelineError(f"rank {pipe.ctx.rank} holds the last stage and needs the "
                                    f"targets; pass them to evaluate()")
            B = out[0].shape[0] if isinstance(out, tuple) else out.shape[0]
            sizes = microbatch_sizes(B, pipe.M)
            norm = batch_normalizer(pipe.loss_fn, targets, normalizer)
            if pipe.ctx.dp_size > 1:  # this replica's rows, weighted against the global batch
                from conveyor.runtime.train.dataparallel import replica_rows, take_rows

                total = _rows(targets)
                targets = take_rows(targets, replica_rows(total, pipe.ctx.dp_size,
                                                          pipe.ctx.dp_rank))
                B = total
            mean = pipe.config.loss_reduction == "mean"
            outs = (torch.split(out, sizes) if isinstance(out, torch.Tensor)
                    else list(zip(*(torch.split(t, sizes) for t in out))))
            tgts = (torch.split(targets.to(out.device if isinstance(out, torch.Tensor)
                                           else out[0].device), sizes)
                    if isinstance(targets, torch.Tensor)
                    else list(zip(*(torch.split(t, sizes) for t in targets))))
            with torch.no_grad():
                for n, o, t in zip(sizes, outs, tgts):
                    w = 1.0 / norm if norm is not None else n / B if mean else 1.0
                    part = pipe.loss_fn(pipe.policy.wide_output(o), t).detach().to(
                        torch.float64) * w
                    loss = part if loss is None else loss + part
        return pipe._share_loss(loss)


def _rows(targets) -> int:
    return (targets if isinstance(targets, torch.Tensor) else targets[0]).shape[0]


def split_side(side: dict, sizes: list[int], device) -> list[dict]:
    """Cut {name: tensor (batch along dim 0)} into per-micro-batch dicts.

    Raises PipelineError naming the entry whose batch size is wrong."""
    B = sum(sizes)
    parts = {}
    for name, t in side.items():
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] != B:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PipelineError(f"side input {name!r} is {got}; a side input must be a tensor "
                                f"with the batch ({B}) along dim 0")
        parts[name] = torch.split(t.to(device), sizes)
    return [{name: parts[name][mb] for name in parts} for mb in range(len(sizes))]


def _same(e: ConveyorError) -> ConveyorError:
    e.same_on_every_rank = True  # bad arguments: every rank fails alike
    return e
