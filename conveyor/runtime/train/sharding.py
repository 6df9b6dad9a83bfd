"""The optimizer state sharded over data-parallel replicas (ZeRO stage 1, as
Megatron's distributed optimizer): ``PipelineConfig(shard_optimizer=True)``
with ``dp`` > 1.

Without it, every replica holds the whole optimizer state of its stages
(Adam: two tensors the size of the parameters). With it, each pipeline rank's
parameters are laid out in flat buffers, one per bucket (the parameters of
one local stage and dtype, as the gradient all-reduce groups them), padded
to a multiple of dp; the parameters become views into them. Replica d owns
the d-th of dp equal slices of every bucket, and the optimizer is built over
those slices only, so its state is 1/dp of the unsharded state. A step:

1. each bucket's gradients are reduce-scattered over the dp group: replica d
   receives the replicas' sum for its slice. The scatter starts when the
   stage's last backward on this rank has run (``Interpreter.after``, as the
   all-reduce it replaces), overlapping the rest of the backward;
2. tied weights (``conveyor.runtime.train.tied``) each have a bucket of their
   own, scattered after the tie sum (the sums are linear, so their order does
   not change the result);
3. the update (accumulation mean, clipping on the global norm, the optimizer)
   works on the slices; the norm sums the squares over every rank and replica;
4. after the optimizer step each bucket is all-gathered, asynchronously; a
   stage waits for its buckets right before its first forward of the next
   step (and inference, ``save`` and ``load`` wait for all of them), so the
   exchange overlaps whatever runs between the update and that forward.

Between a step and the next forward the weights are complete only after
``wait()``; conveyor's own entry points wait. Gradients: where an unsharded
``forward_backward`` leaves every parameter's final gradient in ``.grad``,
a sharded one leaves the final sums in this replica's slices
(``pipe.shards.params``, what the optimizer updates), unscaled and checked
for NaN and Inf; the parameters' ``.grad`` (views of the bucket's flat
gradient buffer, which autograd accumulates into, so the gradients are held
once) keep this replica's own gradients, tie sums included. A
``before_step`` hook sees those, not the slices.

The optimizer must treat all parameters alike (one parameter group, as built
by ``optimizer(params)``): a slice mixes the elements of several parameters.
Elementwise optimizers (SGD, Adam, AdamW, ...) then update each element as
the unsharded optimizer would; checkpoints store the state gathered back per
parameter name (``gather_state``), the same as an unsharded save, so they
load at any dp, P, sharded or not (``load_state``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.train.dataparallel import stage_buckets
from conveyor.schedule.ir import F

__all__ = ["ShardedOptimizer", "optimizer_state_bytes", "check_sharding"]


def check_sharding(shard: bool, dp: int, optimizer) -> None:
    """Raise PipelineError where sharding cannot do anything."""
    if not shard:
        return
    if dp <= 1:
        raise PipelineError("shard_optimizer=True splits the optimizer state over the dp "
                            "replicas, but dp=1: it would do nothing; run dp > 1 replicas "
                            "(Pipeline(..., dp=N)) or leave shard_optimizer off")
    if optimizer is None:
        raise PipelineError("shard_optimizer=True with optimizer=None: there is no optimizer "
                            "state to shard; pass optimizer=lambda ps: ... or leave it off")


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state``, each storage once."""
    seen: dict[int, int] = {}
    for st in optimizer.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                s = v.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class _Bucket:
    """Parameters of one flat buffer; ``k`` elements per replica's slice."""

    def __init__(self, stage: int, params: list, dp: int, d: int, late: bool):
        self.stage, self.params, self.late = stage, params, late
        p0 = params[0]
        n = sum(p.numel() for p in params)
        self.k = -(-n // dp)
        self.flat = torch.zeros(self.k * dp, dtype=p0.dtype, device=p0.device)
        self.offsets, at = [], 0
        with torch.no_grad():
            for p in params:
                self.flat[at:at + p.numel()].copy_(p.detach().reshape(-1))
                p.data = self.flat[at:at + p.numel()].view_as(p)
                self.offsets.append(at)
                at += p.numel()
        self.grads = torch.zeros_like(self.flat)
        self.views = [self.grads[at:at + p.numel()].view_as(p)
                      for p, at in zip(params, self.offsets)]
        self.shard = torch.nn.Parameter(self.flat[d * self.k:(d + 1) * self.k])
        self.out = torch.zeros(self.k, dtype=p0.dtype, device=p0.device)

    def bind_grads(self) -> None:
        """Before a backward: a parameter without a gradient gets a zeroed view
        of the flat buffer as its ``.grad``, which autograd then accumulates
        into in place (as DDP's gradient-as-bucket-view), so no second copy
        of the gradients is kept."""
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                view.zero_()
                p.grad = view

    def fill_grads(self) -> list[torch.Tensor]:
        """The local gradients in the flat buffer (zeros where none), in dp slices."""
        g = self.grads
        for p, view, at in zip(self.params, self.views, self.offsets):
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():  # replaced (e.g. by the tie sum)
                g[at:at + p.numel()].copy_(p.grad.detach().reshape(-1))
        return list(g.chunk(len(g) // self.k))


class ShardedOptimizer:
    """One rank's buckets, its optimizer over its slices, and the exchanges.

    Takes the place of ``GradSync`` (``arm``, ``finish``, ``early``) and adds
    ``take_grads`` (after the tie sum), ``params`` / ``counted`` (what the
    update and the norm work on) and ``wait``. Built by ``Pipeline`` after its
    training loop (which knows the ties); collective over the dp group.
    """

    def __init__(self, pipe, factory, *, overlap: bool):
        ctx = pipe.ctx
        self.group, self.dp, self.d = ctx.dp_group, ctx.dp_size, ctx.dp_rank
        self.armed, self.early = False, 0
        self.pending: dict[int, list] = {}   # stage -> reduce-scatters under way
        self.gathers: dict[int, list] = {}   # stage -> all-gathers under way
        interp, stages, tied = pipe.interp, pipe.stages, pipe.loop.tied
        last, per_stage = stage_buckets(interp.row, stages)
        tied_ids = {id(p) for tie in tied.mine for p in tie.local}
        self.buckets: list[_Bucket] = []
        for s in sorted(stages, key=lambda s: last[s]):
            by_dtype: dict = {}
            for p in per_stage[s]:
                if id(p) in tied_ids:  # scattered after the tie sum: a bucket of its own
                    self.buckets.append(_Bucket(s, [p], self.dp, self.d, late=True))
                else:
                    by_dtype.setdefault((p.dtype, p.device), []).append(p)
            self.buckets += [_Bucket(s, ps, self.dp, self.d, late=False)
                             for ps in by_dtype.values()]
        self.params = [b.shard for b in self.buckets]
        # A tie counts once in the norm: on its first owner, for its first local use.
        first = {id(t.local[0]) for t in tied.mine if ctx.rank == t.ranks[0]}
        self.counted = [b.shard for b in self.buckets
                        if not b.late or id(b.params[0]) in first]
        self.optimizer = factory(self.params)
        got = [p for g in getattr(self.optimizer, "param_groups", []) for p in g["params"]]
        if not isinstance(self.optimizer, torch.optim.Optimizer) or \
                len(self.optimizer.param_groups) != 1 or \
                [id(p) for p in got] != [id(p) for p in self.params]:
            raise PipelineError(
                "shard_optimizer=True builds the optimizer over flat slices of the "
                "parameters, so optimizer(params) must return one torch optimizer with one "
                "parameter group holding exactly the parameters it is given (per-parameter "
                "groups cannot be sharded); drop the groups or leave shard_optimizer off")
        self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self._gather())
        self.order = sorted({b.stage for b in self.buckets}, key=lambda s: last[s])
        if overlap:
            for s in self.order:
                if last[s] >= 0:
                    interp.after(last[s], lambda s=s: self._start(s, early=True))
        self._wait_before_forwards(interp)
        interp.on_step(self._bind_grads, lambda: None)
        pipe._eval_interp.on_step(self.wait, lambda: None)

    def _bind_grads(self) -> None:
        for b in self.buckets:
            b.bind_grads()

    def _wait_before_forwards(self, interp) -> None:
        """Each stage waits for its buckets right before its first forward."""
        for s in self.order:
            first = next((i for i, a in enumerate(interp.row) if a.stage == s and a.kind == F),
                         None)
            if first is None or first == 0:
                interp.on_step(lambda s=s: self.wait(s), lambda: None)
            else:
                interp.after(first - 1, lambda s=s: self.wait(s))

    # -- gradients -------------------------------------------------------------------
    def arm(self, on: bool) -> None:
        self.armed = on
        self.pending.clear()
        if on:
            self.early = 0

    def _start(self, s: int, early: bool = False) -> None:
        if not self.armed or s in self.pending:
            return
        self.early += early
        work = []
        for b in self.buckets:
            if b.stage == s and not b.late:
                work.append((dist.reduce_scatter(b.out, b.fill_grads(), group=self.group,
                                                 async_op=True), b))
        self.pending[s] = work

    def finish(self) -> None:
        """Start what has not started, wait for every scatter, and hand each
        slice its summed gradient. Collective over the dp group."""
        self.armed = True
        for s in self.order:
            self._start(s)
        for s in self.order:
            for work, b in self.pending.get(s, ()):
                with bounded(f"the data-parallel gradient reduce-scatter of stage {s}",
                             self.group):
                    work.wait()
                b.shard.grad = b.out
        self.armed = False
        self.pending.clear()

    def take_grads(self) -> None:
        """After the tie sum: scatter the tied weights' buckets. Collective."""
        for b in self.buckets:
            if b.late:
                with bounded("the tied weights' gradient reduce-scatter", self.group):
                    dist.reduce_scatter(b.out, b.fill_grads(), group=self.group)
                b.shard.grad = b.out

    # -- parameters ------------------------------------------------------------------
    def _gather(self) -> None:
        """After the optimizer step: start every bucket's all-gather."""
        self.wait()
        for b in self.buckets:
            mine = b.shard.detach().clone()  # the input must not alias an output
            work = dist.all_gather(list(b.flat.chunk(self.dp)), mine, group=self.group,
                                   async_op=True)
            self.gathers.setdefault(b.stage, []).append((work, mine))

    def wait(self, s: int | None = None) -> None:
        """Wait for the all-gathers of stage ``s`` (None: all): its weights
        are then whole."""
        for stage in ([s] if s is not None else list(self.gathers)):
            for work, _ in self.gathers.pop(stage, ()):
                with bounded(f"the parameters' all-gather of stage {stage}", self.group):
                    work.wait()

    # -- checkpoints -----------------------------------------------------------------
    def gather_state(self, pname: dict[int, str]) -> dict:
        """The optimizer state per parameter name, as an unsharded optimizer of
        this rank's parameters would save it (``checkpoint_io``'s layout).
        Collective over the dp group."""
        self.wait()
        sd = self.optimizer.state_dict()
        hyper = {k: v for k, v in sd["param_groups"][0].items() if k != "params"}
        state: dict = {}
        for i, b in enumerate(self.buckets):
            st = sd["state"].get(i)
            if st is None:
                continue
            full = {}
            for key, v in st.items():
                if torch.is_tensor(v) and v.dim() == 1 and v.numel() == b.k:
                    parts = [torch.empty_like(v) for _ in range(self.dp)]
                    with bounded("the optimizer state's gather for a checkpoint", self.group):
                        dist.all_gather(parts, v.contiguous(), group=self.group)
                    full[key] = torch.cat(parts)
                else:
                    full[key] = v
            for p, at in zip(b.params, b.offsets):  # each its own copy: Adam steps in place
                state[pname[id(p)]] = {
                    key: (v[at:at + p.numel()].view_as(p).cpu().clone()
                          if torch.is_tensor(v) and v.dim() == 1 and v.numel() == b.k * self.dp
                          else (v.detach().cpu().clone() if torch.is_tensor(v) else v))
                    for key, v in full.items()}
        names = [pname[id(p)] for b in self.buckets for p in b.params]
        return {"state": state, "groups": [{**hyper, "params": names}]}

    def load_state(self, pname: dict[int, str], saved: list[dict]) -> None:
        """Load per-name optimizer state (any dp, P, sharded or not) into the
        slices; hyper-parameters from the saved group of the first parameter."""
        self.wait()
        by_name = {k: v for s in saved for k, v in s["state"].items()}
        group_of = {n: g for s in saved for g in s["groups"] for n in g["params"]}
        first = pname[id(self.buckets[0].params[0])] if self.buckets else None
        if first is not None and first not in group_of:
            from conveyor.runtime.train.checkpoint_io import CheckpointError
            raise CheckpointError(f"checkpoint has no optimizer group holding {first}")
        state = {}
        for i, b in enumerate(self.buckets):
            per = [by_name.get(pname[id(p)]) for p in b.params]
            if all(st is None for st in per):
                continue
            keys = next(st for st in per if st is not None).keys()
            slot: dict = {}
            for key in keys:
                vals = [None if st is None else st.get(key) for st in per]
                if all(torch.is_tensor(v) and v.shape == p.shape
                       for v, p in zip(vals, b.params)):
                    full = torch.zeros_like(b.flat)
                    for v, p, at in zip(vals, b.params, b.offsets):
                        full[at:at + p.numel()].copy_(v.reshape(-1))
                    slot[key] = full[self.d * b.k:(self.d + 1) * b.k].clone()
                else:  # a per-parameter scalar (Adam's step): the same for every element
                    v = next(v for v in vals if v is not None)
                    slot[key] = v.clone() if torch.is_tensor(v) else v
            state[i] = slot
        hyper = {k: v for k, v in (group_of[first] if first else {}).items() if k != "params"}
        self.optimizer.load_state_dict({"state": state, "param_groups": [
            {**hyper, "params": list(range(len(self.buckets)))}]})
