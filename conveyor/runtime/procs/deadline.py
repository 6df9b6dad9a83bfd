"""One deadline for every collective: ``with bounded(what, group): dist.x(...)``.

Point-to-point waits are watched through the comm's hooks (``hang``). Every
other blocking call conveyor makes on a process group once a pipeline is
built (the step agreement, the loss all-reduce, tie sums, the gradient-norm
all-reduce, data-parallel all-reduces, checkpoint barriers, the timeline
gather, the recorded-step barrier, the end-of-function agreement) runs
inside ``bounded``. It marks the wait in this process's ``Progress``, so the
hang watch bounds it by ``PipelineConfig.timeout_s`` as it bounds a receive:
past it, one table names the collective, its ranks and what every rank was
last doing, and every process exits. The watch thread does that, not the
blocked call, so it works whatever the backend (gloo, NCCL, and shared
memory, whose collectives run on gloo) and whether or not the backend can
interrupt a collective.

Without a watch (one process, no store, or before the first pipeline is
built) ``bounded`` does nothing and the process group's own timeout
(``LaunchOptions.timeout_s``) remains. tests/runtime/test_deadline_calls.py
checks that no blocking ``torch.distributed`` call in the runtime is made
outside ``bounded`` except the set-up calls it lists.

Cost: two attribute writes and one write into the last-words map per
collective, and the group's ranks looked up (a dictionary in torch).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from conveyor.runtime.procs import hang

__all__ = ["bounded", "ranks_of"]


def ranks_of(group) -> tuple[int, ...]:
    """The global ranks of ``group`` (None: the whole world)."""
    import torch.distributed as dist

    if group is None:
        return tuple(range(dist.get_world_size()))
    return tuple(dist.get_process_group_ranks(group))


def _show(ranks: tuple[int, ...]) -> str:
    if len(ranks) > 2 and list(ranks) == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))


@contextmanager
def bounded(what: str, group=None):
    """Run the body (one blocking collective, or a few that belong together)
    under this process's hang deadline. ``what`` names it ("the loss
    broadcast"); ``group`` is the process group it runs on (None: the world).
    Nests: an inner wait is reported while it lasts, the outer one after."""
    w = hang.current()
    if w is None:
        yield
        return
    p, lw = w.progress, w.last_words
    ranks = ranks_of(group)
    text = f"{what} over ranks {_show(ranks)}"
    outer = (p.collective, p.members, p.wait_since)
    # wait_since first: the watch must never see this wait with an older start
    p.wait_since = time.monotonic()
    p.members = ranks
    p.collective = text
    if lw is not None:
        lw.collective(text.encode()[:400])
    try:
        yield
    finally:
        p.collective, p.members, p.wait_since = outer[0], outer[1], outer[2]
        if outer[0] is None:
            p.last, p.idle_since = text, time.monotonic()
            if lw is not None:
                if p.step is not None and p.doing is not None:
                    lw.busy(p.doing)
                else:
                    lw.idle()
