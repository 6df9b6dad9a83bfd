"""Several measured steps of one run, as page data: the spread per rank.

One recorded step can hide a slow rank (a step where it happened to be fast)
or show one that is not (a step with a hiccup). Given several steps of the
same run (``conveyor.runtime.measure`` returns one timeline per step; the
runtime's ``record`` option writes one per step), the page shows, per rank,
the median and the worst over the steps of its compute time and of its time
waiting on a peer, and names the straggler: the rank whose median compute
time per step is longest, which the others end up waiting for.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from conveyor.errors import TimelineError
from conveyor.sim.timeline import Timeline
from conveyor.views.measured import measured_section

__all__ = ["steps_section"]


def _spread(values: list[float]) -> list[float]:
    """[median, worst (largest)] of one rank's values over the steps."""
    return [statistics.median(values), max(values)]


def steps_section(timelines: Sequence[Timeline], sources: Sequence[str | Path], *,
                  schedule: str | None = None, P: int | None = None,
                  M: int | None = None) -> dict:
    """Page data for the measured steps ``timelines`` (read from ``sources``).

    Returns {"files", "schedule", "P", "M", "unit", "runs" (one
    ``measured_section`` per step, in the order given), "step" [median,
    worst] step time, "busy" and "wait" [median, worst] per rank (compute
    time, and time waiting on a peer: the bubble), "median_step" (the index
    of the step with the median step time, drawn first) and "straggler"
    {"rank", "busy", "others", "ratio"} (None with one rank)}.

    Raises TimelineError when fewer than two steps are given, when they are
    not all runs of one schedule, P and M, or as ``measured_section`` does.
    """
    if len(timelines) != len(sources):
        raise ValueError("give one source name per timeline")
    if len(timelines) < 2:
        raise TimelineError("several steps need at least two timelines; pass one --timeline "
                            "per recorded step, or a single one to see that step alone")
    names = [Path(str(s)).name for s in sources]
    first = timelines[0]
    for tl, name in zip(timelines[1:], names[1:]):
        if (tl.schedule, tl.P, tl.M) != (first.schedule, first.P, first.M):
            raise TimelineError(
                f"{name!r} is a run of {tl.schedule!r} with P={tl.P}, M={tl.M}, but "
                f"{names[0]!r} is of {first.schedule!r} with P={first.P}, M={first.M}; "
                f"pass steps of one run")
        if tl.unit != first.unit:
            raise TimelineError(f"{name!r} is in {tl.unit!r} but {names[0]!r} in "
                                f"{first.unit!r}; pass steps of one run")
    runs = [measured_section(tl, source=src, schedule=schedule, P=P, M=M)
            for tl, src in zip(timelines, sources)]
    busy = [[tl.busy(r) for tl in timelines] for r in range(first.P)]
    wait = [[0.0] * len(timelines) for _ in range(first.P)]
    for k, run in enumerate(runs):
        for r, a, b, kind, _ in run["measured"]["pieces"]:
            if kind == 0:
                wait[r][k] += b - a
    steps = [tl.step_time for tl in timelines]
    order = sorted(range(len(steps)), key=steps.__getitem__)
    straggler = None
    if first.P > 1:
        medians = [statistics.median(b) for b in busy]
        r = max(range(first.P), key=medians.__getitem__)
        others = statistics.median(m for q, m in enumerate(medians) if q != r)
        straggler = {"rank": r, "busy": medians[r], "others": others,
                     "ratio": medians[r] / others if others > 0 else None}
    return {"files": names, "schedule": first.schedule, "P": first.P, "M": first.M,
            "unit": first.unit, "runs": runs, "step": _spread(steps),
            "busy": [_spread(b) for b in busy], "wait": [_spread(w) for w in wait],
            "median_step": order[(len(order) - 1) // 2], "straggler": straggler}
