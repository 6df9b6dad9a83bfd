"""Timelines as Chrome / Perfetto trace JSON (open in ui.perfetto.dev or
chrome://tracing).

One process for the pipeline, one thread (track) per rank, one complete
("X") slice per event, named by the action's text form (``2F5``); with data
parallelism each rank's all-reduces on a track of their own below the ranks
(they overlap the rank's compute, and slices on one track must nest). Trace times
are microseconds: seconds and milliseconds convert exactly; a slot (the
simulator's unit for pictures) is shown as one millisecond.
"""

from __future__ import annotations

import json
from pathlib import Path

from conveyor.schedule.ir import COMPUTE_KINDS
from conveyor.sim.timeline import Timeline
from conveyor.views.files import atomic_write

__all__ = ["US_PER_UNIT", "chrome_trace", "save_trace"]

US_PER_UNIT = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3, "slot": 1e3}


def chrome_trace(tl: Timeline) -> dict:
    """The trace as a dict in the Trace Event Format: ``traceEvents`` with
    metadata names, then one slice per timeline event; ``otherData`` carries
    the schedule, unit and bubble. Unknown units are treated like slots."""
    scale = US_PER_UNIT.get(tl.unit, 1e3)
    t0 = tl.t0
    out: list[dict] = [{"ph": "M", "pid": 0, "name": "process_name",
                        "args": {"name": f"conveyor {tl.schedule} P={tl.P} M={tl.M} "
                                         f"({tl.source})"}}]
    for r in range(tl.P):
        out.append({"ph": "M", "pid": 0, "tid": r, "name": "thread_name",
                    "args": {"name": f"rank {r}"}})
        out.append({"ph": "M", "pid": 0, "tid": r, "name": "thread_sort_index",
                    "args": {"sort_index": r}})
    for e in sorted(tl.events, key=lambda e: (e.rank, e.start, e.end)):
        a = e.action
        out.append({"name": str(a), "cat": "compute" if a.kind in COMPUTE_KINDS else "comm",
                    "ph": "X", "pid": 0, "tid": e.rank,
                    "ts": (e.start - t0) * scale, "dur": (e.end - e.start) * scale,
                    "args": {"stage": a.stage, "kind": a.kind, "mb": a.mb}})
    ar_ranks = sorted({c.rank for c in tl.collectives})
    for i, r in enumerate(ar_ranks):
        out.append({"ph": "M", "pid": 0, "tid": tl.P + r, "name": "thread_name",
                    "args": {"name": f"rank {r} all-reduce"}})
        out.append({"ph": "M", "pid": 0, "tid": tl.P + r, "name": "thread_sort_index",
                    "args": {"sort_index": tl.P + i}})
    for c in sorted(tl.collectives, key=lambda c: (c.rank, c.start)):
        out.append({"name": f"all-reduce stage {c.stage}", "cat": "allreduce", "ph": "X",
                    "pid": 0, "tid": tl.P + c.rank, "ts": (c.start - t0) * scale,
                    "dur": (c.end - c.start) * scale,
                    "args": {"stage": c.stage, "ready": (c.ready - t0) * scale}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"schedule": tl.schedule, "P": tl.P, "M": tl.M, "S": tl.S,
                          "source": tl.source, "unit": tl.unit,
                          "us_per_unit": scale, "step_time": tl.step_time,
                          "bubble": tl.bubble_overall}}


def save_trace(tl: Timeline, path: str | Path) -> Path:
    """Write ``chrome_trace(tl)`` to ``path`` (atomically) and return the path."""
    text = json.dumps(chrome_trace(tl), separators=(",", ":"))
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
