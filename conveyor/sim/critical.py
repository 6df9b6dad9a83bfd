"""Why each action started when it did, and the critical path of a step.

Every rank runs its list in order, so an action starts at the later of two
times: when its rank finished the previous action, and when its last input
arrived (the dependency's end, plus the link time when the data crosses a
cut). The one that set the start *binds* the action. Following the binding
back from the action that ends the step gives the critical path: a chain of
actions and transfers, with no slack between them, from the step's start to
its end. Making anything on it faster can shorten the step; nothing off it
can.

Ties are broken as the replay (``conveyor.schedule.deps``) breaks them: the
rank's previous action first, then the dependencies in the order
``Dependencies`` lists them, a later one binding only when it arrives strictly
later. The explorer page records the same choice during its replay, and a
browser test holds its critical path equal to this one.

Index letters as in ``conveyor.schedule.ir``: r rank, s stage, mb micro-batch.
"""

from __future__ import annotations

from typing import NamedTuple

from conveyor.errors import TimelineError
from conveyor.schedule.deps import Dependencies
from conveyor.schedule.ir import Action, Schedule
from conveyor.sim.cost import CostModel
from conveyor.sim.timeline import Timeline

__all__ = ["Binding", "bindings", "critical_path"]

START, RANK, DATA = "start", "rank", "data"


class Binding(NamedTuple):
    """Why ``action`` on ``rank`` started at ``start``.

    via:  "start" (first on its rank, at the step's start), "rank" (its rank
          was busy with ``waited_for`` until then) or "data" (it waited for the
          output of ``waited_for``, which ended ``link`` earlier).
    waited_for: the action it waited for (None for "start").
    link: the transfer time on the way (0 on the same rank).
    """

    rank: int
    action: Action
    start: float
    end: float
    via: str
    waited_for: Action | None
    link: float


def _link_fn(schedule: Schedule, costs: CostModel):
    _, link = costs.duration_fn(schedule.S)
    if costs.multi_node:
        return costs.cut_links(schedule.placement, schedule.S, schedule.P).__getitem__
    return link


def bindings(schedule: Schedule, timeline: Timeline,
             costs: CostModel | None = None) -> dict[Action, Binding]:
    """For every action of ``timeline`` (a simulation of ``schedule`` under
    ``costs``; default CostModel()), why it started when it did.

    Raises TimelineError when the timeline's start times are not those the
    binding rule gives (it is not this schedule under these costs)."""
    costs = costs or CostModel()
    deps = Dependencies(schedule)
    link = _link_fn(schedule, costs)
    events = {e.action: e for e in timeline.events}
    out: dict[Action, Binding] = {}
    for r, row in enumerate(schedule.actions):  # each rank's list, in its order
        prev = None
        for a in row:
            e = events.get(a)
            if e is None:
                raise TimelineError(f"{a} of schedule {schedule.name!r} is not in the timeline")
            t = 0.0 if prev is None else prev.end
            via, what, hop = (START, None, 0.0) if prev is None else (RANK, prev.action, 0.0)
            for d, cut in deps(a):
                arrive = events[d].end
                lk = 0.0
                if cut is not None:
                    lk = link(cut)
                    arrive += lk
                if arrive > t:
                    t, via, what, hop = arrive, DATA, Action(*d), lk
            if t != e.start:
                raise TimelineError(f"{e.action} on rank {r} starts at {e.start}, but its rank "
                                    f"and inputs give {t}: the timeline is not schedule "
                                    f"{schedule.name!r} simulated under these costs")
            out[e.action] = Binding(r, e.action, e.start, e.end, via, what, hop)
            prev = e
    return out


def critical_path(schedule: Schedule, timeline: Timeline,
                  costs: CostModel | None = None) -> list[Binding]:
    """The critical path of ``timeline`` (``schedule`` simulated under
    ``costs``), first action first: from the action that ends last (the lowest
    rank on a tie), each action's binding back to one that started the step.
    With communication actions in the schedule, its SEND/RECV are on it too;
    all-reduces (data parallelism) are not. Raises TimelineError as
    ``bindings`` does."""
    why = bindings(schedule, timeline, costs)
    if not why:
        return []
    last = max(why.values(), key=lambda b: (b.end, -b.rank))
    path = [last]
    while path[-1].via != START:
        path.append(why[path[-1].waited_for])
    path.reverse()
    return path
