"""The timeline: start and end of every action on every rank.

The simulator predicts one and the runtime measures one; they are the same
type, so every view and metric works on both and can put them side by side.
Compute actions (F, B, I, W) count as busy; communication events (a receive
the rank waited on, in measured timelines) are recorded but count as idle, and
any time a rank is not computing inside the step is bubble.

With data parallelism, ``collectives`` holds each rank's gradient all-reduces
(``conveyor.sim.dp.Collective``): they count as idle, like transfers, but the
step runs until the last of them ends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from functools import cached_property
from operator import itemgetter
from typing import NamedTuple

from conveyor.checks import check_int
from conveyor.errors import TimelineError
from conveyor.limits import check_size
from conveyor.schedule.ir import B, COMPUTE_KINDS, F, I, W, Action
from conveyor.sim.dp import Collective
from conveyor.userfiles import read_json

__all__ = ["Event", "Collective", "Timeline", "load_timeline"]

FORMAT = "conveyor.timeline/1"


class Event(NamedTuple):
    """Action ``action`` ran on rank ``rank`` from ``start`` to ``end``."""

    rank: int
    action: Action
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    """Events of one step (or several steps' worth, see ``steps``).

    P, M, S:   ranks, micro-batches, stages.
    schedule:  the schedule's name.
    source:    "simulated" or "measured".
    unit:      time unit of start/end ("slot", "s", ...).
    meta:      free-form facts (cost model, run configuration, ...).
    collectives: the data-parallel all-reduces, per rank (empty without DP).

    Treat a timeline as immutable once built: metrics are computed once.
    """

    P: int
    M: int
    S: int
    schedule: str
    events: list[Event]
    source: str = "simulated"
    unit: str = "slot"
    forward_only: bool = False
    meta: dict = field(default_factory=dict)
    collectives: list[Collective] = field(default_factory=list)

    # -- metrics -------------------------------------------------------------
    @cached_property
    def _by_rank(self) -> list[list[Event]]:
        rows: list[list[Event]] = [[] for _ in range(self.P)]
        compute = frozenset(COMPUTE_KINDS)
        # Index access, not field names: a million events at P = 128, M = 4096.
        for e in self.events:
            if e[1][1] in compute:
                rows[e[0]].append(e)
        # By (start, end) as two stable sorts on float keys, which list.sort
        # compares in C, many times faster than (start, end) tuples.
        by_end, by_start = itemgetter(3), itemgetter(2)
        for row in rows:
            row.sort(key=by_end)
            row.sort(key=by_start)
        return rows

    @cached_property
    def _busy(self) -> list[float]:
        return [sum([e[3] - e[2] for e in row]) for row in self._by_rank]

    @cached_property
    def t0(self) -> float:
        return min([e[2] for e in self.events], default=0.0)  # e[2]: start

    @cached_property
    def step_time(self) -> float:
        """From the first start to the last end, over all ranks."""
        if not self.events:
            return 0.0
        return max(self.pipeline_end, max((c.end for c in self.collectives), default=0.0)) \
            - self.t0

    @cached_property
    def pipeline_end(self) -> float:
        """The last action's end, all-reduces left out."""
        return max([e[3] for e in self.events], default=0.0)  # e[3]: end

    def busy(self, r: int) -> float:
        return self._busy[r]

    def bubble(self, r: int) -> float:
        """Fraction of the step that rank r spends not computing."""
        T = self.step_time
        return 1.0 - self.busy(r) / T if T > 0 else 0.0

    def bubbles(self) -> list[float]:
        return [self.bubble(r) for r in range(self.P)]

    @property
    def bubble_overall(self) -> float:
        """Idle rank-time over all rank-time: 1 - sum(busy) / (P * step)."""
        T = self.step_time
        if T <= 0:
            return 0.0
        return 1.0 - sum(self.busy(r) for r in range(self.P)) / (self.P * T)

    def rank_events(self, r: int, compute_only: bool = True) -> list[Event]:
        """Rank r's events in time order (compute actions only, by default)."""
        if compute_only:
            return list(self._by_rank[r])
        return sorted((e for e in self.events if e.rank == r), key=lambda e: (e.start, e.end))

    def idle_intervals(self, r: int) -> list[tuple[float, float]]:
        """Gaps (start, end) inside the step in which rank r computes nothing."""
        t, end = self.t0, self.t0 + self.step_time
        gaps = []
        for e in self._by_rank[r]:
            if e.start > t + 1e-12:
                gaps.append((t, e.start))
            t = max(t, e.end)
        if end > t + 1e-12:
            gaps.append((t, end))
        return gaps

    def peak_activations(self) -> list[int]:
        """Per rank, the most micro-batches held at once: forward done, backward
        (B, or W when the backward is split) not yet done, summed over the
        rank's stages. A forward-only step keeps nothing for a backward: 0."""
        peaks = []
        for r in range(self.P):
            held = peak = 0
            if not self.forward_only:
                for e in self._by_rank[r]:
                    kind = e.action.kind
                    if kind == F:
                        held += 1
                        peak = max(peak, held)
                    elif kind == B or kind == W:
                        held -= 1
            peaks.append(peak)
        return peaks

    def stage_costs(self) -> dict[str, list[float]]:
        """Mean duration of each compute kind per stage (for a matching cost model)."""
        sums: dict[tuple[str, int], list[float]] = {}
        for e in self.events:
            if e.action.kind in COMPUTE_KINDS:
                sums.setdefault((e.action.kind, e.action.stage), []).append(e.duration)
        out: dict[str, list[float]] = {}
        for kind in (F, B, I, W):
            if any(k == kind for k, _ in sums):
                out[kind] = [sum(v) / len(v) if (v := sums.get((kind, s))) else 0.0
                             for s in range(self.S)]
        return out

    def summary(self) -> dict:
        return {"P": self.P, "M": self.M, "S": self.S, "schedule": self.schedule,
                "source": self.source, "unit": self.unit, "step_time": self.step_time,
                "bubble": self.bubble_overall, "bubble_per_rank": self.bubbles(),
                "peak_activations": self.peak_activations()}

    # -- files ---------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "P": self.P, "M": self.M, "S": self.S,
             "schedule": self.schedule, "source": self.source, "unit": self.unit,
             "forward_only": self.forward_only, "meta": self.meta,
             "metrics": self.summary(),
             "events": [[e.rank, str(e.action), e.start, e.end] for e in self.events]}
        if self.collectives:  # absent without DP: such files stay as they were
            d["collectives"] = [list(c) for c in self.collectives]
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "timeline") -> "Timeline":
        if not isinstance(d, dict):
            raise TimelineError(f"{source} is not a timeline: expected a JSON object")
        missing = [k for k in ("P", "M", "S", "schedule", "events") if k not in d]
        if missing:
            raise TimelineError(f"{source} is not a timeline: missing field(s) "
                                f"{', '.join(missing)}; write it with Timeline.save or "
                                f"the runtime's timeline option")
        for k in ("P", "M", "S"):
            check_int(d[k], f"{source}: {k}", error=TimelineError)
        check_size(d["P"], d["M"], S=d["S"], what=f"timeline {source}", error=TimelineError)
        events = []
        for i, row in enumerate(d["events"] if isinstance(d["events"], list) else [None]):
            try:
                rank, text, start, end = row
                a = Action.parse(text)
                start, end = float(start), float(end)
            except Exception:
                raise TimelineError(f"{source}: event {i} is {row!r}; expected "
                                    f"[rank, action, start, end] like [0, '0F0', 0.0, 1.0]") from None
            if not (isinstance(rank, int) and 0 <= rank < d["P"]):
                raise TimelineError(f"{source}: event {i} names rank {rank!r} but P={d['P']}")
            if not (math.isfinite(start) and math.isfinite(end) and end >= start):
                raise TimelineError(f"{source}: event {i} ({text}) has start {start} and end "
                                    f"{end}; need finite times with end >= start")
            if not (0 <= a.stage < d["S"] and 0 <= a.mb < d["M"]):
                raise TimelineError(f"{source}: event {i} ({text}) is outside S={d['S']}, "
                                    f"M={d['M']}")
            events.append(Event(rank, a, start, end))
        return cls(P=d["P"], M=d["M"], S=d["S"], schedule=str(d["schedule"]), events=events,
                   source=str(d.get("source", "measured")), unit=str(d.get("unit", "s")),
                   forward_only=bool(d.get("forward_only", False)), meta=dict(d.get("meta") or {}),
                   collectives=_collectives(d.get("collectives") or [], d, source))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    def shifted(self, t0: float = 0.0) -> "Timeline":
        """The same timeline with its first start moved to ``t0``."""
        d = t0 - self.t0
        return Timeline(self.P, self.M, self.S, self.schedule,
                        [Event(e.rank, e.action, e.start + d, e.end + d) for e in self.events],
                        self.source, self.unit, self.forward_only, dict(self.meta),
                        [c._replace(start=c.start + d, end=c.end + d, ready=c.ready + d)
                         for c in self.collectives])


def _collectives(rows, d: dict, source: str) -> list[Collective]:
    """Read the ``collectives`` rows [rank, stage, start, end, ready] of a file."""
    out = []
    for i, row in enumerate(rows if isinstance(rows, list) else [None]):
        try:
            rank, stage = (int(x) for x in row[:2])
            start, end, ready = (float(x) for x in row[2:])
        except Exception:
            raise TimelineError(f"{source}: collective {i} is {row!r}; expected "
                                f"[rank, stage, start, end, ready]") from None
        if not (0 <= rank < d["P"] and 0 <= stage < d["S"]
                and all(math.isfinite(x) for x in (start, end, ready)) and end >= start >= ready):
            raise TimelineError(f"{source}: collective {i} is {row!r}; need rank < P, stage < "
                                f"S and finite times with ready <= start <= end")
        out.append(Collective(rank, stage, start, end, ready))
    return out


def load_timeline(path: str | Path) -> Timeline:
    """Read a timeline JSON file; TimelineError when it is not one."""
    path = Path(path)
    data = read_json(path, what="timeline", error=TimelineError,
                     fix="pass the JSON file the runtime or `conveyor simulate -o` wrote")
    return Timeline.from_dict(data, source=repr(str(path)))

