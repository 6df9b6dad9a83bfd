"""The replay inlines the dependency rules of ``Dependencies`` on integer keys
(for speed at P = 128, M = 4096). Here a plain replay written on
``Dependencies`` itself, one action at a time, must give the same start and end
of every action, and the same stuck ranks, on every registered schedule,
lowered or not, under uneven costs and link times."""

from __future__ import annotations

import random

import pytest

from conveyor.schedule import add_comms, build_schedule, schedule_names
from conveyor.schedule.deps import Dependencies, replay
from conveyor.schedule.ir import Action, schedule_from_rows
from conveyor.sim import CostModel


def reference(schedule, duration, link):
    """Sweep the ranks until none moves: start/end per action, and where each stopped."""
    deps_of = Dependencies(schedule)
    rows = schedule.actions
    pos, clock = [0] * len(rows), [0.0] * len(rows)
    start, end = {}, {}
    moved = True
    while moved:
        moved = False
        for r, row in enumerate(rows):
            while pos[r] < len(row):
                a = row[pos[r]]
                deps = deps_of(a)
                if any(d not in end for d, _ in deps):
                    break
                t = clock[r]
                for d, cut in deps:
                    e = end[d] + (link(cut) if cut is not None else 0.0)
                    t = max(t, e)
                start[a], end[a] = t, t + duration(r, a)
                clock[r] = end[a]
                pos[r] += 1
                moved = True
    stuck = {}
    for r, row in enumerate(rows):
        if pos[r] < len(row):
            a = row[pos[r]]
            missing = next(d for d, _ in deps_of(a) if d not in end)
            stuck[r] = (pos[r], a, Action(*missing))
    return start, end, stuck


def _costs(rng, S):
    per = lambda lo, hi: [round(rng.uniform(lo, hi), 3) for _ in range(S)]  # noqa: E731
    f, i, w = per(0.2, 2), per(0.2, 2), per(0, 1.5)
    return CostModel(forward=f, backward=[x + y for x, y in zip(i, w)], input_grad=i,
                     weight_grad=w, latency=round(rng.uniform(0, 0.7), 3), bandwidth=50.0,
                     activation_bytes=[rng.choice([0, 10, 40]) for _ in range(S - 1)])


@pytest.mark.parametrize("name", schedule_names())
def test_inlined_rules_time_every_schedule_as_dependencies_do(name):
    rng = random.Random(name)
    for P, M in [(1, 3), (2, 5), (3, 4), (4, 8)]:
        try:
            sched = build_schedule(name, P, M)
        except Exception:  # some schedules exist only for some P and M
            continue
        for s in (sched, add_comms(sched)):
            duration, link = _costs(rng, s.S).duration_fn(s.S)
            got = replay(s, duration, link)
            start, end, stuck = reference(s, duration, link)
            assert got.start == start and got.end == end and got.stuck == stuck == {}
            assert [got.end_of(a) for a in end] == list(end.values())
            # and without the duration table: the per-action call gives the same
            assert replay(s, lambda r, a: duration(r, a), link).end == end


def test_stuck_ranks_are_named_as_dependencies_do():
    # rank 1 runs B before the F it needs; with comms both ranks receive first.
    s = schedule_from_rows("x", [["0F0", "0B0"], ["1B0", "1F0"]])
    got = replay(s, lambda r, a: 1.0)
    assert got.stuck == reference(s, lambda r, a: 1.0, lambda c: 0.0)[2]
    assert got.stuck == {1: (0, Action(1, "B", 0), Action(1, "F", 0)),
                         0: (1, Action(0, "B", 0), Action(1, "B", 0))}
    swapped = schedule_from_rows("y", [["0RECV_B0", "0F0", "0SEND_F0", "0B0"],
                                       ["1RECV_F0", "1F0", "1B0", "1SEND_B0"]])
    got = replay(swapped, lambda r, a: 1.0)
    assert got.stuck == reference(swapped, lambda r, a: 1.0, lambda c: 0.0)[2] != {}
