"""Dependencies between actions, and an in-order replay of a schedule.

The replay is the one engine behind both the validator (unit durations: does
every rank get through its list?) and the simulator (real costs: when does each
action start and end?). Each rank runs its list strictly in order; an action
starts when its rank is free and every action it depends on has ended (plus the
link time when the dependency crosses a cut). Sends never block (they are
posted asynchronously); a receive blocks until its send has been posted and the
data has crossed the link. That is the semantics of the runtime, which posts
isend/irecv early and waits only where the data is needed.
"""

from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from conveyor.schedule.ir import (
    B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule,
)

__all__ = ["Dependencies", "Replay", "replay", "paused_gc"]

# A dependency: the action waited for, and the cut its data crosses (cut c lies
# between stage c and stage c+1), or None when it stays on the rank.
Dep = tuple[Action, "int | None"]


class Dependencies:
    """What each action of one schedule waits for.

    Without communication actions, a forward waits for the previous stage's
    forward and a backward for the next stage's backward, across the cut.
    With them (after lowering), those waits go through RECV_* actions that
    wait for the matching SEND_* on the other rank.
    """

    def __init__(self, schedule: Schedule):
        self.S = schedule.S
        self.placement = schedule.placement
        self.comms = schedule.has_comms
        # Which kind produced the input gradient of (s, mb): B, or I when split.
        self.grad_kind: dict[tuple[int, int], str] = {}
        for row in schedule.actions:
            for a in row:
                if a.kind == I or (a.kind == B and (a.stage, a.mb) not in self.grad_kind):
                    self.grad_kind[(a.stage, a.mb)] = a.kind

    def _grad(self, s: int, mb: int) -> tuple:
        return (s, self.grad_kind.get((s, mb), B), mb)

    # Dependencies are returned as plain (stage, kind, mb) tuples: they hash
    # and compare equal to Actions, and skip NamedTuple construction, which
    # dominates the replay of large schedules.
    def __call__(self, a: Action) -> list[Dep]:
        s, kind, mb = a
        last = self.S - 1
        place = self.placement
        if kind == F:
            if s == 0:
                return []
            if place[s - 1] == place[s]:
                return [((s - 1, F, mb), None)]
            if self.comms:
                return [((s, RECV_F, mb), None)]
            return [((s - 1, F, mb), s - 1)]
        if kind == B or kind == I:
            if s < last:
                if place[s + 1] == place[s]:
                    return [((s, F, mb), None), (self._grad(s + 1, mb), None)]
                if self.comms:
                    return [((s, F, mb), None), ((s, RECV_B, mb), None)]
                return [((s, F, mb), None), (self._grad(s + 1, mb), s)]
            return [((s, F, mb), None)]
        if kind == W:
            return [((s, I, mb), None)]
        if kind == SEND_F:
            return [((s, F, mb), None)]
        if kind == SEND_B:
            return [(self._grad(s, mb), None)]
        if kind == RECV_F:
            return [((s - 1, SEND_F, mb), s - 1)]
        if kind == RECV_B:
            return [((s + 1, SEND_B, mb), s)]
        raise AssertionError(f"unknown action kind in {a}")


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector while a large, acyclic structure is
    built (an action per tuple, 100k+ of them): its generation-0 passes
    otherwise take about a quarter of a big replay. Nested uses are fine."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Replay:
    """Result of an in-order replay.

    start, end: time of every action that ran.
    stuck:      for each rank that could not finish, (step, action, dependency)
                where it stopped; empty when the whole schedule ran.
    """

    start: dict[Action, float]
    end: dict[Action, float]
    stuck: dict[int, tuple[int, Action, Action]]


def replay(schedule: Schedule, duration: Callable[[int, Action], float],
           link: Callable[[int], float] = lambda cut: 0.0) -> Replay:
    """Run every rank's list in order under ``duration(rank, action)`` and
    ``link(cut)`` (time for data to cross cut c). Linear in the number of
    actions: a blocked rank sleeps until the action it waits for ends."""
    with paused_gc():
        return _replay(schedule, duration, link)


def _replay(schedule, duration, link) -> Replay:
    deps_of = Dependencies(schedule)
    rows = schedule.actions
    P = len(rows)
    pos = [0] * P
    clock = [0.0] * P
    start: dict[Action, float] = {}
    end: dict[Action, float] = {}
    end_get = end.get
    waiting: dict[Action, list[int]] = {}
    blocked_on: dict[int, Action] = {}
    ready = deque(range(P))
    while ready:
        r = ready.popleft()
        row, i, now = rows[r], pos[r], clock[r]
        n = len(row)
        blocked_on.pop(r, None)
        while i < n:
            a = row[i]
            t = now
            missing = None
            for d, cut in deps_of(a):
                e = end_get(d)
                if e is None:
                    missing = d
                    break
                if cut is not None:
                    e += link(cut)
                if e > t:
                    t = e
            if missing is not None:
                waiting.setdefault(missing, []).append(r)
                blocked_on[r] = missing
                break
            start[a] = t
            now = t + duration(r, a)
            end[a] = now
            i += 1
            if waiting:  # most actions wake nobody: skip the lookup when none waits
                woken = waiting.pop(a, None)
                if woken:
                    ready.extend(woken)
        pos[r], clock[r] = i, now
    stuck = {r: (pos[r], rows[r][pos[r]], Action(*blocked_on[r]))
             for r in range(P) if pos[r] < len(rows[r])}
    return Replay(start, end, stuck)
