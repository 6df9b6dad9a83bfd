"""Measured timelines beside their prediction.

A measured timeline (from the runtime) names its schedule, P and M. We rebuild
that schedule with the engine, check that the timeline really is a run of it,
and simulate it with the per-stage costs the run measured, so that measured and
predicted bubbles can be compared for the same work.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from conveyor.errors import ScheduleError, TimelineError
from conveyor.schedule import B, F, I, W, Schedule, build_schedule
from conveyor.schedule.ir import COMPUTE_KINDS
from conveyor.sim import CostModel, simulate
from conveyor.sim.timeline import Timeline
from conveyor.views.idle import WAIT, idle_totals, split_idle
from conveyor.views.metrics import bubble_code, stage_peaks

__all__ = ["match_schedule", "measured_costs", "simulate_like", "measured_section",
           "cpu_note"]


def match_schedule(tl: Timeline, *, source: str = "timeline", schedule: str | None = None,
                   P: int | None = None, M: int | None = None) -> Schedule:
    """The engine's schedule that ``tl`` is a run of.

    ``schedule``, ``P`` and ``M``, when given, are what the user asked for and
    must agree with the timeline. Raises TimelineError naming the mismatch when
    they do not, when the schedule is unknown, or when the timeline's events are
    not exactly the schedule's compute actions on their ranks.
    """
    for what, asked, have in (("schedule", schedule, tl.schedule), ("P", P, tl.P),
                              ("M", M, tl.M)):
        if asked is not None and asked != have:
            raise TimelineError(f"{source} was recorded with {what}={have!r} but {what}="
                                f"{asked!r} was requested; drop the option or pass a timeline "
                                f"recorded with {what}={asked!r}")
    try:
        sched = build_schedule(tl.schedule, tl.P, tl.M).compute_only()
    except ScheduleError as e:
        raise TimelineError(f"{source}: {e}") from None
    if tl.forward_only:
        sched = sched.without_backward()
    where = f"schedule {tl.schedule!r} with P={tl.P}, M={tl.M}"
    if sched.S != tl.S:
        raise TimelineError(f"{source} has S={tl.S} stages but {where} has {sched.S}; "
                            f"P (or the schedule) does not match the run")
    want = Counter((r, a) for r, _, a in sched)
    have = Counter((e.rank, e.action) for e in tl.events if e.action.kind in COMPUTE_KINDS)
    missing, extra = want - have, have - want
    if missing or extra:
        bad, note = (missing, "is missing") if missing else (extra, "is not in the schedule")
        (r, a), n = min(bad), len(missing) + len(extra)
        more = f" (and {n - 1} more difference(s))" if n > 1 else ""
        raise TimelineError(f"{source} is not a run of {where}: {a} on rank {r} {note}{more}; "
                            f"was it recorded with another P, M or schedule?")
    return sched


def measured_costs(tl: Timeline) -> CostModel:
    """A cost model with the run's mean per-stage time of each compute kind.
    Links are free: a measured compute time already contains what the rank did."""
    costs = tl.stage_costs()
    f = costs.get(F, [0.0] * tl.S)
    i, w = costs.get(I), costs.get(W)
    b = costs.get(B)
    if b is None:
        b = [x + y for x, y in zip(i, w)] if i and w else [0.0] * tl.S
    return CostModel(forward=f, backward=b, input_grad=i, weight_grad=w)


def simulate_like(tl: Timeline, sched: Schedule) -> Timeline:
    """Simulate ``sched`` with the per-stage costs measured in ``tl``."""
    return simulate(sched, measured_costs(tl), unit=tl.unit)


def _idle(tl: Timeline) -> dict:
    """The idle pieces for the page: ``pieces`` rows [rank, start, end, kind (0
    waiting on a peer, 1 transfer in flight), message index or -1], adjacent
    pieces of one kind and message merged; ``messages`` rows [receive, its
    rank, send or None, sender or None, send start, send end, receive start,
    receive end] (times from the step's start, None where there is no send);
    and the shares of rank-time ``wait``, ``transfer``, ``idle``."""
    t0 = tl.t0
    pieces = split_idle(tl)
    index: dict[int, int] = {}
    messages, rows = [], []
    for p in pieces:
        m = -1
        if p.message is not None:
            key = id(p.message.recv)
            if key not in index:
                index[key] = len(messages)
                rv, sd = p.message.recv, p.message.send
                messages.append([str(rv.action), rv.rank, None if sd is None else str(sd.action),
                                 p.message.sender, None if sd is None else sd.start - t0,
                                 None if sd is None else sd.end - t0, rv.start - t0,
                                 rv.end - t0])
            m = index[key]
        kind = 0 if p.kind == WAIT else 1
        last = rows[-1] if rows else None
        if last and last[0] == p.rank and last[3] == kind and last[4] == m \
                and last[2] == p.start - t0:
            last[2] = p.end - t0
        else:
            rows.append([p.rank, p.start - t0, p.end - t0, kind, m])
    return {"pieces": rows, "messages": messages, **idle_totals(tl, pieces)}


def _events(tl: Timeline) -> dict:
    # Communication events (SEND/RECV) come too, and with them each rank's
    # idle time split into waiting on a peer (the bubble) and transfer in
    # flight (views/idle.py), so that moving data is not drawn as bubble.
    t0 = tl.t0
    return {
        "events": [[e.rank, str(e.action), e.start - t0, e.end - t0]
                   for r in range(tl.P) for e in tl.rank_events(r, compute_only=False)],
        "T": tl.step_time, "bubble": bubble_code(tl), "per_rank": tl.bubbles(),
        "peaks": stage_peaks(tl), **_idle(tl),
    }


def cpu_note(tl: Timeline, cores: int | None = None) -> str | None:
    """The CLI's shared-cores note when the run had more ranks than CPU cores
    (``cores``: the machine's, default ``os.cpu_count()``) and its stages were
    not emulated devices (those sleep, so sharing cores does not slow them)."""
    cores = cores or os.cpu_count() or 1
    if tl.source != "measured" or tl.P <= cores or tl.meta.get("device_time"):
        return None
    return (f"{tl.P} processes share {cores} CPU cores here, so at most {cores} compute at "
            f"once and the measured bubble cannot fall below 1 - {cores}/{tl.P} = "
            f"{100 * (1 - cores / tl.P):.0f}%")


def measured_section(tl: Timeline, *, source: str | Path = "timeline",
                     schedule: str | None = None, P: int | None = None,
                     M: int | None = None) -> dict:
    """Page data for a measured run: its events and bubble, and those of the
    same schedule simulated with the measured costs. ``schedule``, ``P``, ``M``
    are what the user asked for, as in ``match_schedule``. Raises TimelineError
    when ``tl`` is not a run of the schedule it names or of the one asked for."""
    name = Path(str(source)).name
    sched = match_schedule(tl, source=repr(name), schedule=schedule, P=P, M=M)
    sim = simulate_like(tl, sched)
    return {"file": name, "schedule": tl.schedule, "P": tl.P, "M": tl.M, "S": tl.S,
            "placement": list(sched.placement), "unit": tl.unit,
            "forward_only": tl.forward_only,
            "measured": _events(tl), "simulated": _events(sim), "note": cpu_note(tl)}
