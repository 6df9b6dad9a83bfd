"""Data parallelism over pipeline replicas: the batch slice and the gradient sum.

Batch: every rank passes the global batch (B rows) to ``step``, as with one
pipeline. Replica d takes the rows ``replica_rows(B, dp, d)``: contiguous
slices whose sizes differ by at most one, the larger first (B=10, dp=4:
rows 0-2, 3-5, 6-7, 8-9); for B divisible by dp that is rows
[d*B/dp, (d+1)*B/dp). Each micro-batch's loss is weighted against the
*global* batch (size / B for a mean loss, 1 / normaliser for a token loss),
so the sum over replicas of their gradients is the unsplit model's gradient
on the global batch, and the sum of their losses is its loss. The replicas
therefore all-reduce with SUM: for a mean loss over an even split that is
the usual average of per-replica mean gradients.

Overlap: a stage's gradients are final once the last B (or W, in a split
backward) of that stage on this rank has run. ``GradSync`` hooks that action
(``Interpreter.after``) and starts one asynchronous all-reduce of the
stage's gradients flattened into one buffer per dtype (a bucket), on the dp
group, while the rank goes on with the rest of its schedule; the update waits
for them all before tied-weight sums, clipping and the optimizer step. A
parameter that several local stages share is reduced with the stage whose
last backward runs latest. ``dp_overlap=False`` starts every bucket after
the whole backward instead (the baseline the benchmark compares with).

Tied weights: the tie sum (inside a replica) and the dp sum (across
replicas) are both sums, so their order does not matter; the dp sum runs
first because it overlaps the backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.procs.deadline import bounded
from conveyor.schedule.ir import B, I, W

__all__ = ["replica_rows", "take_rows", "replica_batch", "GradSync", "broadcast_from_replica0",
           "stage_buckets"]


def replica_rows(batch: int, dp: int, d: int) -> slice:
    """The rows of a global batch of ``batch`` that replica ``d`` of ``dp`` takes."""
    sizes = microbatch_sizes(batch, dp)
    start = sum(sizes[:d])
    return slice(start, start + sizes[d])


def take_rows(obj, rows: slice):
    """``obj`` (a tensor, a tuple/list of tensors, a {name: tensor} dict or
    None) cut to ``rows`` along dim 0."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj[rows]
    if isinstance(obj, dict):
        return {k: take_rows(v, rows) for k, v in obj.items()}
    return type(obj)(take_rows(t, rows) for t in obj)


def replica_batch(ctx, inputs, targets, side, batch_size):
    """This replica's rows of a step's global batch: (inputs, targets, side,
    global B, local B); B None when no rank-local part gives it (the batch
    check that follows names the problem)."""
    from conveyor.runtime.execute.batching import _batch_of

    given = inputs if inputs is not None else targets
    B = batch_size
    if B is None and given is not None:
        B = _batch_of(given, "inputs" if inputs is not None else "targets",
                      f"rank {ctx.rank}", ctx.rank)
    if B is None:
        return inputs, targets, side, None, None
    rows = replica_rows(B, ctx.dp_size, ctx.dp_rank)
    return (take_rows(inputs, rows), take_rows(targets, rows), take_rows(side, rows), B,
            rows.stop - rows.start)


def broadcast_from_replica0(modules, ctx) -> None:
    """Copy replica 0's parameters and buffers into every replica (as DDP does
    at construction), so replicas start equal even if seeded apart.
    Collective over the dp groups."""
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, group=ctx.dp_group, group_src=0)


def stage_buckets(row, stages: dict) -> tuple[dict[int, int], dict[int, list]]:
    """For each of this rank's stages, the index in ``row`` of its last
    backward action (B, I or W; -1 if none), and the trainable parameters
    whose gradients are final once it has run: a parameter shared by
    several local stages joins the one that finishes last."""
    last = {s: max((i for i, a in enumerate(row) if a.stage == s and a.kind in (B, I, W)),
                   default=-1) for s in stages}
    owner: dict[int, int] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for s in sorted(stages, key=lambda s: last[s]):
        for p in stages[s].parameters():
            if p.requires_grad:
                owner[id(p)], params[id(p)] = s, p
    return last, {s: [params[k] for k in params if owner[k] == s] for s in stages}


class GradSync:
    """The dp gradient all-reduce of one rank's stages.

    ``arm(True)`` before a step whose update follows (the last call of an
    accumulation window); ``finish()`` before the update: starts what has
    not started and waits for everything. Not armed, the hooks do nothing, so
    the gradients of an accumulation window add up locally first.
    """

    def __init__(self, interp, stages: dict, ctx, *, overlap: bool):
        self.group = ctx.dp_group
        self.armed = False
        self.pending: dict[int, list] = {}
        self.early = 0  # buckets started during the last armed step's backward
        self._flat: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # reused each step
        last, self.buckets = stage_buckets(interp.row, stages)
        self.order = sorted(stages, key=lambda s: last[s])
        if overlap:
            for s in stages:
                if last[s] >= 0 and self.buckets[s]:
                    interp.after(last[s], lambda s=s: self._start(s, early=True))

    def arm(self, on: bool) -> None:
        self.armed = on
        self.pending.clear()
        if on:
            self.early = 0

    def _start(self, s: int, early: bool = False) -> None:
        if not self.armed or s in self.pending:
            return
        self.early += early
        started = []
        by_dtype: dict[torch.dtype, list] = {}
        for p in self.buckets[s]:
            if p.grad is not None:  # None on every replica alike (same model, same code)
                by_dtype.setdefault(p.grad.dtype, []).append(p)
        for dtype, ps in by_dtype.items():
            n = sum(p.grad.numel() for p in ps)
            flat = self._flat.get((s, dtype))
            if flat is None or flat.numel() != n or flat.device != ps[0].grad.device:
                flat = self._flat[(s, dtype)] = torch.empty(n, dtype=dtype,
                                                            device=ps[0].grad.device)
            torch.cat([p.grad.detach().reshape(-1) for p in ps], out=flat)
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            started.append((work, flat, ps))
        self.pending[s] = started

    def finish(self) -> None:
        """Start the buckets not yet started, wait for all, and write the sums
        back into ``.grad``. Collective over this rank's dp group."""
        self.armed = True
        for s in self.order:
            self._start(s)
        for s in self.order:
            for work, flat, ps in self.pending.get(s, ()):
                with bounded(f"the data-parallel gradient all-reduce of stage {s}", self.group):
                    work.wait()
                at = 0
                for p in ps:
                    n = p.grad.numel()
                    p.grad.detach().copy_(flat[at:at + n].view_as(p.grad))
                    at += n
        self.armed = False
        self.pending.clear()
