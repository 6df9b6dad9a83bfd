"""The planner's candidates: one configuration each, what it costs and why it lost.

Also the micro-batch counts the planner tries, the runtime's split of a batch
over them, and the candidate schedule builds (a generator's options: chunks
per rank ``v``, or v-budget's ``budget``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.errors import ConveyorError
from conveyor.plan.messages import checkpoint_text
from conveyor.schedule.generators import build_schedule
from conveyor.schedule.ir import B, F, W, Schedule

__all__ = ["Candidate", "PlanResult", "microbatch_sizes", "default_microbatches", "build",
           "in_flight", "budget_options"]


@dataclass
class Candidate:
    """One configuration and what the simulator predicts for it.

    The schedule is built only when the candidate might win (``schedule`` is
    None until then); ``S`` and ``placement`` come from a cheap probe build.
    """

    name: str
    M: int
    chunks: int             # the generator's v option (1: its default)
    P: int
    S: int
    placement: tuple
    split: bool             # the schedule splits the backward into I and W
    balance: list[int]
    checkpoint: list[bool]
    sizes: list[int]
    schedule: Schedule | None = None
    step: float = float("inf")
    bubble: float = float("nan")
    peak_bytes: list[float] = field(default_factory=list)
    fits: bool | None = None  # None: never built (it could not win)
    note: str = ""          # why it lost (filled in by ``search``)
    bound: float = 0.0      # no step can be shorter (see ``_Searcher.cost``)
    shard: bool = False     # optimizer state sharded over the dp replicas
    options: dict = field(default_factory=dict)  # other generator options (v-budget's budget)
    _costs: object = None

    @property
    def v(self) -> int:
        return self.S // self.P

    @property
    def checkpoint_text(self) -> str:
        return checkpoint_text(self.checkpoint)

    @property
    def label(self) -> str:
        """The schedule's name with its options, e.g. ``v-budget(budget=10)``."""
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options.items())})"


@dataclass
class PlanResult:
    best: Candidate
    candidates: list[Candidate]   # fastest first; those over budget last
    budget: float | None
    _peaks: object = None         # Candidate -> its peak bytes per rank

    def peaks(self, c: Candidate) -> list[float]:
        """Per rank peak bytes of ``c`` (without a budget the search replays
        memory only for the best; other rows on demand)."""
        return self._peaks(c) if self._peaks is not None else c.peak_bytes


def microbatch_sizes(batch: int, M: int) -> list[int]:
    """The runtime's split: sizes differ by at most one, the larger first."""
    k, r = divmod(batch, M)
    return [k + 1 if i < r else k for i in range(M)]


def default_microbatches(P: int, batch: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... and P, 2P, 4P, 8P, up to min(batch, 8P, 256)."""
    top = min(batch, max(8 * P, 8), 256)
    out, m = {P, 2 * P, 4 * P, 8 * P}, 1
    while m <= top:
        out |= {m, m + m // 2}
        m *= 2
    return sorted(x for x in out if 1 <= x <= top)


def build(name: str, P: int, M: int, v: int, options: dict | None = None
          ) -> Schedule | None:
    """The schedule, or None where the generator does not take these P, M,
    v or options."""
    try:
        if v == 1:
            return build_schedule(name, P, M, **(options or {}))
        return build_schedule(name, P, M, v=v, **(options or {}))
    except (ConveyorError, TypeError, ValueError):
        return None  # this schedule does not take these P, M or v


def budget_options(name: str, P: int) -> list[dict]:
    """The generator options the planner tries for ``name``: for v-budget,
    budgets a quarter, half and three quarters of the way from V-Min's peak to
    ZB-V's 2P chunk-activations (V-Min, V-Half and ZB-V themselves are
    candidates of their own); [{}] for every other schedule."""
    if name != "v-budget":
        return [{}]
    from conveyor.schedule.vshape import budget_range

    low, high = budget_range(P)
    picks = sorted({low + (high - low) * q // 4 for q in (1, 2, 3)} - {low, high})
    return [{"budget": b} for b in picks]


def in_flight(schedule: Schedule) -> list[int]:
    """Per stage, the most micro-batches in flight (order only)."""
    peak = [0] * schedule.S
    held = [0] * schedule.S
    for row in schedule.actions:
        for a in row:
            if a.kind == F:
                held[a.stage] += 1
                peak[a.stage] = max(peak[a.stage], held[a.stage])
            elif a.kind in (B, W):
                held[a.stage] -= 1
    return peak


