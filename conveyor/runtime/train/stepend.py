"""The end of a training step: the loss and every rank's flags, summed, on
every rank, one message after the last rank's last action.

What travels: four float64 numbers per rank (the weighted loss, on the last
stage's rank only; this rank's non-finite loss and gradient flags; its
auxiliary losses). Every rank needs the sums before its update: the loss is
returned everywhere, and a non-finite value anywhere skips (or stops) the
update everywhere (``grads``).

How, over gloo and shared memory: the rank that finishes the step last
(``finishing_rank``: rank 0 in 1F1B and GPipe, whose first stage runs the
last backward) is the root. Once the step's agreement has passed, the root
posts a receive for every other rank's numbers and every other rank posts
the receive of the sums (``post``). Each rank sends its numbers as soon as
its own part of the step is done; gloo sends at once into a receive already
posted, so by the time the root finishes they have arrived. The root adds
them up (in rank order: the same sums on every run) and sends the sums to
each rank directly. The step's end is then one hop after the root's last
action, where an all-reduce starts only when the last rank joins and then
takes 2 (P - 1) dependent steps on gloo's ring (benchmarks/SCHEDULES.md has
the measured difference). Receives are posted only after the agreement:
ranks that disagree fail before anything is posted, so nothing is left
posted for a later step to collide with.

Over NCCL, which pairs point-to-point messages in posting order rather than
by tag, and whose all-reduce is one kernel, the sums come from one
all-reduce (``share``). With data parallelism, one all-reduce over the
replicas follows either way.

Waits run under the hang watch (``deadline.bounded``), named "the loss
broadcast".
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.procs.star import Star, usable

__all__ = ["StepEnd", "share", "UP_TAG", "DOWN_TAG", "WIDTH"]

# Point-to-point tags of these messages: above every tag the comm uses
# (``transport.comm``: ((mb * cuts + cut) * 3 + direction) * 16 + index,
# under 2**30 for any M and P a step can hold) and apart from the
# agreement's (``procs.agree``), so they never pair with another message,
# whatever the order of posting (also under strict_order).
UP_TAG = 2**31 - 3    # a rank's numbers to the root
DOWN_TAG = 2**31 - 4  # the sums from the root
WIDTH = 4             # loss, loss flag, gradient flag, auxiliary losses


class StepEnd:
    """One training step's exchange of loss and flags (see the module docstring).

    ``root``: the pipeline rank that finishes the step last. ``post()`` after
    the agreement; ``share(loss, flags)`` after this rank's gradients are
    final. Point-to-point (``procs.star``) over the pipeline's group unless
    ``ctx.backend`` is NCCL or P = 1.
    """

    def __init__(self, ctx, root: int):
        self.ctx = ctx
        self.star = (Star(group=ctx.pp_group, rank=ctx.rank, size=ctx.world_size, root=root,
                          up_tag=UP_TAG, down_tag=DOWN_TAG, up_shape=(WIDTH,),
                          down_shape=(WIDTH,), dtype=torch.float64)
                     if usable(ctx.backend, ctx.world_size) else None)

    def post(self) -> None:
        """Post this step's receives (once; returns at once)."""
        if self.star is not None:
            self.star.post()

    def share(self, loss, flags: tuple) -> tuple[float, list[float]]:
        """The step's loss on every rank, and ``flags`` (at most 3 numbers)
        summed over every rank of the job. Collective: every rank calls it once."""
        if self.star is None:
            return share(self.ctx, loss, flags)
        ctx, star = self.ctx, self.star
        mine = torch.zeros(WIDTH, dtype=torch.float64)
        if loss is not None:
            mine[0] = loss.detach().to("cpu", torch.float64)
        mine[1:1 + len(flags)] = torch.tensor(flags, dtype=torch.float64)
        with bounded("the loss broadcast", ctx.pp_group):
            if star.is_root:
                total = torch.stack(star.collect(mine)).sum(0)  # rank order: the same every run
                star.reply(total)
            else:
                star.send(mine)
                total = star.answer()
        values = total.tolist()
        if ctx.dp_size > 1:  # each replica's loss is its share of the global batch's
            buf = total.to(ctx.device)
            with bounded("the loss all-reduce over replicas", ctx.dp_group):
                dist.all_reduce(buf, group=ctx.dp_group)
                values = buf.tolist()
        return values[0], values[1:1 + len(flags)]


def share(ctx, loss, flags: tuple = ()) -> tuple[float, list[float]]:
    """The step's loss on every rank, and ``flags`` summed over every rank,
    by all-reduce: one over the pipeline (only the last stage's rank holds a
    loss, the others add 0, which is exact) and one over the replicas (each
    replica's loss is its share of the global batch's). NCCL's path."""
    if ctx.world_size == 1 and ctx.dp_size == 1:
        return float(loss), [float(f) for f in flags]
    buf = torch.zeros(1 + len(flags), dtype=torch.float64, device=ctx.device)
    if loss is not None:
        buf[0] = loss.to(ctx.device)
    if flags:
        buf[1:] = torch.tensor(flags, dtype=torch.float64)
    # Each wait includes reading the values: on NCCL the call only enqueues
    # the collective and the host blocks in .tolist().
    if ctx.world_size > 1:
        with bounded("the loss all-reduce", ctx.pp_group):
            dist.all_reduce(buf, group=ctx.pp_group)
            values = buf.tolist()
    if ctx.dp_size > 1:  # each replica's loss is its share of the global batch's
        with bounded("the loss all-reduce over replicas", ctx.dp_group):
            dist.all_reduce(buf, group=ctx.dp_group)
            values = buf.tolist()
    return values[0], values[1:]
