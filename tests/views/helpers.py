"""Timelines for the view tests, built with the Timeline type itself: the
runtime's measured timelines have the same form (source "measured", unit "s")."""

from __future__ import annotations

import random

from conveyor.errors import ScheduleError
from conveyor.schedule import Action, Schedule, build_schedule, register
from conveyor.schedule.deps import replay
from conveyor.schedule.generators import _REGISTRY
from conveyor.schedule.ir import B, F, I, W, v_placement
from conveyor.sim import Timeline
from conveyor.sim.timeline import Event


def measured_like(name: str = "gpipe", P: int = 4, M: int = 8, *, seed: int = 0,
                  forward: float = 0.010, backward: float = 0.020,
                  jitter: float = 0.25) -> Timeline:
    """A run of schedule ``name`` as the runtime would record it: times in
    seconds, every action's duration jittered, an arbitrary clock origin."""
    rng = random.Random(seed)
    sched = build_schedule(name, P, M)
    base = {F: forward, B: backward, I: backward / 2, W: backward / 2}
    durations = {a: base[a.kind] * (1 + rng.uniform(-jitter, jitter)) for _, _, a in sched}
    run = replay(sched, lambda r, a: durations[a])
    t0 = 1_700_000_000.0  # wall-clock seconds, as time.time() gives
    events = [Event(sched.placement[a.stage], a, t0 + run.start[a], t0 + run.end[a])
              for a in run.start]
    return Timeline(P=P, M=sched.M, S=sched.S, schedule=name, events=events,
                    source="measured", unit="s", meta={"note": "jittered test run"})


def vshape_split(P: int, M: int) -> Schedule:
    """A V-shaped schedule with split backward, for testing that views are
    generic: stage s and 2P-1-s share rank s; all forwards in stage order, then
    input gradients back up, then weight gradients. Rank lists follow one
    global topological order, so the schedule is valid (not efficient)."""
    placement = v_placement(P)
    S = len(placement)
    order = [Action(s, F, mb) for mb in range(M) for s in range(S)]
    order += [Action(s, I, mb) for mb in range(M) for s in reversed(range(S))]
    order += [Action(s, W, mb) for mb in range(M) for s in range(S)]
    rows = [[a for a in order if placement[a.stage] == r] for r in range(P)]
    return Schedule("test-vshape", P, M, tuple(map(tuple, rows)), placement=placement)


def picky(P: int, M: int) -> Schedule:
    """GPipe, but only where M is a multiple of P (as some interleaved schedules
    require); elsewhere it refuses with a ScheduleError."""
    if M % P:
        raise ScheduleError(f"test-picky needs M to be a multiple of P (P={P}, M={M}); "
                            f"use M={P * (M // P + 1)}")
    return build_schedule("gpipe", P, M).replace(name="test-picky")


class registered:
    """Context manager: a test-only generator in the schedule registry, removed after."""

    def __init__(self, name: str, fn, summary: str):
        self.name, self.fn, self.summary = name, fn, summary

    def __enter__(self) -> str:
        register(self.name, self.summary)(self.fn)
        return self.name

    def __exit__(self, *exc) -> None:
        _REGISTRY.pop(self.name, None)


def registered_vshape() -> registered:
    return registered("test-vshape", vshape_split, "test only: V placement, split backward")


def registered_picky() -> registered:
    return registered("test-picky", picky, "test only: M must be a multiple of P")


def stage_values(xs: list[float], S: int, P: int, unit: str) -> list[float]:
    """Per-stage values from typed ones, as the page's costs.js resolves them:
    "model" (one value or one per P-th of the model; a stage of S = vP gets
    1/v of its P-th), "layer" (L values, each stage sums its L/S layers) or
    "stage" (one value or one per stage). The same float operations, so the
    results are bit-equal."""
    if unit == "stage":
        return list(xs) * S if len(xs) == 1 else list(xs)
    if unit == "layer":
        per = len(xs) // S
        out = []
        for s in range(S):
            total = 0.0
            for x in xs[s * per:(s + 1) * per]:
                total += x
            out.append(total)
        return out
    v = S / P
    return [(xs[0] if len(xs) == 1 else xs[int(s // v)]) / v for s in range(S)]


def slowed_steps(name: str = "1f1b", P: int = 4, M: int = 8, *, steps: int = 5,
                 slow_rank: int = 2, factor: float = 1.5) -> list[Timeline]:
    """Several recorded-like steps of one run in which rank ``slow_rank``'s
    compute takes ``factor`` times as long as the others' (a straggler), each
    step with its own jitter."""
    out = []
    for k in range(steps):
        rng = random.Random(100 + k)
        sched = build_schedule(name, P, M)
        base = {F: 0.010, B: 0.020, I: 0.010, W: 0.010}
        dur = {a: base[a.kind] * (factor if sched.placement[a.stage] == slow_rank else 1.0)
               * (1 + rng.uniform(-0.1, 0.1)) for _, _, a in sched}
        run = replay(sched, lambda r, a: dur[a])
        t0 = 1_700_000_000.0 + k
        events = [Event(sched.placement[a.stage], a, t0 + run.start[a], t0 + run.end[a])
                  for a in run.start]
        out.append(Timeline(P=P, M=sched.M, S=sched.S, schedule=name, events=events,
                            source="measured", unit="s", meta={"note": f"step {k}"}))
    return out
