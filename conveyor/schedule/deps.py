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
from functools import cached_property
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


class Replay:
    """Result of an in-order replay.

    order:      the actions in the order they ran (over all ranks).
    starts, ends: their start and end times, in that order.
    start, end: time of every action that ran, as dicts (built on first use).
    stuck:      for each rank that could not finish, (step, action, dependency)
                where it stopped; empty when the whole schedule ran.
    """

    def __init__(self, order: list, starts: list[float], ends: list[float],
                 stuck: dict[int, tuple[int, Action, Action]], end_by_key=None, M: int = 1):
        self.order, self.starts, self.ends, self.stuck = order, starts, ends, stuck
        self._end_by_key, self._M = end_by_key, M

    def end_of(self, a) -> float:
        """The end of action ``a`` (KeyError if it did not run), without the dict."""
        if self._end_by_key is None:
            return self.end[a]
        s, kind, mb = a
        t = self._end_by_key[(s * 8 + _KIND[kind]) * self._M + mb]
        if t is None:
            raise KeyError(a)
        return t

    @cached_property
    def start(self) -> dict[Action, float]:
        return dict(zip(self.order, self.starts))

    @cached_property
    def end(self) -> dict[Action, float]:
        return dict(zip(self.order, self.ends))


def replay(schedule: Schedule, duration: Callable[[int, Action], float],
           link: Callable[[int], float] = lambda cut: 0.0) -> Replay:
    """Run every rank's list in order under ``duration(rank, action)`` and
    ``link(cut)`` (time for data to cross cut c). Linear in the number of
    actions: a blocked rank sleeps until the action it waits for ends.

    ``duration`` may carry a ``table`` attribute, ``{kind: [time of stage s]}``
    for every kind, that gives the same times (CostModel's does): the replay
    then reads it instead of calling ``duration`` per action."""
    with paused_gc():
        return _replay(schedule, duration, link)


# Kind numbers of the replay's integer keys: (s * 8 + kind) * M + mb.
_KIND = {F: 0, B: 1, I: 2, W: 3, SEND_F: 4, RECV_F: 5, SEND_B: 6, RECV_B: 7}
_KIND_NAME = tuple(_KIND)


def _replay(schedule, duration, link) -> Replay:
    # The rules of Dependencies.__call__, inlined on integer keys: at P = 128,
    # M = 4096 a call, an Action and a tuple hash per dependency were most of
    # the time. tests/sim/test_replay_rules.py holds the two to the same result.
    rows = schedule.actions
    place = schedule.placement
    S, P, comms = len(place), len(rows), False
    last = S - 1
    M = schedule.M
    if not _in_range(rows, M):  # an unchecked schedule: keys must not collide
        M = 1 + max([a[2] for row in rows for a in row] + [M])
    KM = 8 * M
    end: list = [None] * (S * KM)
    has_i = bytearray(S * M)  # (s, mb) whose input gradient comes from I, not B
    compute = (F, B, W)
    for row in rows:  # one pass for I and for communication (Schedule.has_comms)
        for a in row:
            kind = a[1]
            if kind in compute:
                continue
            if kind == I:
                has_i[a[0] * M + a[2]] = 1
            else:
                comms = True
    lk = [link(c) for c in range(max(S - 1, 0))]
    table = getattr(duration, "table", None)
    pos, clock = [0] * P, [0.0] * P
    order: list = []
    starts: list[float] = []
    ends: list[float] = []
    o_add, s_add, e_add = order.append, starts.append, ends.append
    waiting: dict[int, list[int]] = {}
    blocked_on: dict[int, int] = {}
    ready = deque(range(P))
    while ready:
        r = ready.popleft()
        row, i, now = rows[r], pos[r], clock[r]
        n = len(row)
        blocked_on.pop(r, None)
        while i < n:
            a = row[i]
            s, kind, mb = a
            base = s * KM + mb
            key = base + _KIND[kind] * M
            # Up to two dependencies: d1 on this rank or across cut c1 (-1: none).
            d2 = -1
            if kind == F:
                if s == 0:
                    d1 = -1
                elif place[s - 1] == place[s]:
                    d1, c1 = base - KM, -1
                elif comms:
                    d1, c1 = base + 5 * M, -1
                else:
                    d1, c1 = base - KM, s - 1
            elif kind == B or kind == I:
                d1, c1 = base, -1
                if s < last:
                    if place[s + 1] == place[s] or not comms:
                        d2 = base + KM + (2 * M if has_i[(s + 1) * M + mb] else M)
                        c2 = -1 if place[s + 1] == place[s] else s
                    else:
                        d2, c2 = base + 7 * M, -1
            elif kind == W:
                d1, c1 = base + 2 * M, -1
            elif kind == SEND_F:
                d1, c1 = base, -1
            elif kind == SEND_B:
                d1, c1 = base + (2 * M if has_i[s * M + mb] else M), -1
            elif kind == RECV_F:
                d1, c1 = base - KM + 4 * M, s - 1
            else:  # RECV_B
                d1, c1 = base + KM + 6 * M, s
            t = now
            if d1 >= 0:
                e = end[d1]
                if e is None:
                    waiting.setdefault(d1, []).append(r)
                    blocked_on[r] = d1
                    break
                if c1 >= 0:
                    e += lk[c1]
                if e > t:
                    t = e
            if d2 >= 0:
                e = end[d2]
                if e is None:
                    waiting.setdefault(d2, []).append(r)
                    blocked_on[r] = d2
                    break
                if c2 >= 0:
                    e += lk[c2]
                if e > t:
                    t = e
            now = t + (table[kind][s] if table is not None else duration(r, a))
            end[key] = now
            o_add(a)
            s_add(t)
            e_add(now)
            i += 1
            if waiting:  # most actions wake nobody: skip the lookup when none waits
                woken = waiting.pop(key, None)
                if woken:
                    ready.extend(woken)
        pos[r], clock[r] = i, now
    stuck = {r: (pos[r], rows[r][pos[r]], _action(blocked_on[r], M))
             for r in range(P) if pos[r] < len(rows[r])}
    return Replay(order, starts, ends, stuck, end, M)


def _in_range(rows, M: int) -> bool:
    """Whether every micro-batch index is below M (the schedule's own)."""
    return all(0 <= a[2] < M for row in rows for a in row)


def _action(key: int, M: int) -> Action:
    s, rest = divmod(key, 8 * M)
    k, mb = divmod(rest, M)
    return Action(s, _KIND_NAME[k], mb)
