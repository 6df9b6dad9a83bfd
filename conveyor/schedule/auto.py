"""zb-auto: a zero-bubble order built for the costs at hand.

Given per-stage F, I, W times (unequal allowed), the link latency and a cap on
in-flight micro-batches per rank, it tries a family of candidate orders and
keeps the one whose simulated step is shortest:

- the held-back shapes of ZB-H1/H2 generalised to the cap (warm-up k(P-1-r),
  k in 1..3, W's held back up to the cap), one stage per rank;
- the list scheduler (``listsched``) driven by the same costs, under every
  cap up to the given one, with the later or the earlier chunk first, and W
  run early or only when nothing else can run;
- for the V placement, zbv's and DualPipeV's orders when they fit the cap.

Every candidate is timed by the replay the simulator uses, so the result is
never worse than any fixed schedule in the pool under the same cap. torch's
ZBV docstring notes such a scheduler "could be implemented"; this is one.
"""

from __future__ import annotations

from conveyor.errors import ScheduleError
from conveyor.schedule.deps import replay
from conveyor.schedule.ir import Schedule, check_counts, v_placement
from conveyor.schedule.listsched import Policy, Stalled, list_schedule

__all__ = ["zb_auto"]


def zb_auto(P: int, M: int, *, costs=None, cap: int | None = None,
            placement: str = "line") -> Schedule:
    """The shortest order found for ``costs`` (a conveyor.sim.CostModel; default
    F=1, B=2 split evenly) with at most ``cap`` micro-batches in flight per
    rank (default P, 1F1B's stage-0 peak; with the V placement a chunk counts
    half). ``placement``: "line" (stage r on rank r) or "v" (stages r and
    2P-1-r on rank r). Raises ScheduleError on a bad cap or placement."""
    from conveyor.sim.cost import CostModel  # the core's cost model; no torch
    check_counts(P, M)
    if placement not in ("line", "v"):
        raise ScheduleError(f"zb-auto placement {placement!r} is not known; use 'line' "
                            f"(one stage per rank) or 'v' (stages r and 2P-1-r on rank r)")
    cap = P if cap is None else cap
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ScheduleError(f"zb-auto cap must be an integer >= 1 (micro-batches in flight per "
                            f"rank), got {cap!r}; use cap={P} for 1F1B's memory")
    costs = costs or CostModel()
    place = tuple(range(P)) if placement == "line" else v_placement(P)
    S = len(place)
    table = costs.table(S)
    duration, link = costs.duration_fn(S)
    best: tuple[float, Schedule] | None = None

    def consider(rows, candidate: str) -> None:
        """Time one candidate order; keep it when strictly shorter (the first wins ties)."""
        nonlocal best
        s = Schedule("zb-auto", P, M, tuple(map(tuple, rows)), place,
                     meta={"candidate": candidate, "cap": cap, "placement": placement})
        result = replay(s, duration, link)
        if result.stuck:
            return
        t = max(result.end.values())
        if best is None or t < best[0] - 1e-9:
            best = (t, s)

    chunk_cap = cap if placement == "line" else 2 * cap
    if placement == "line":
        from conveyor.schedule.zerobubble import held_back
        for k in (1, 2, 3):
            warm = [min(chunk_cap - 1, k * (P - 1 - r)) for r in range(P)]
            defer = [min(chunk_cap - 1 - warm[r], k * r) for r in range(P)]
            consider(held_back(P, M, warm, defer, "zb-auto").actions, f"held-back k={k}")
    else:
        from conveyor.schedule.dualpipe import dualpipev
        from conveyor.schedule.zerobubble import zbv
        if chunk_cap >= 2 * P:
            consider(zbv(P, M).actions, "zbv")
        if chunk_cap >= 2 * P + 1:
            consider(dualpipev(P, M).actions, "dualpipev")
    link_list = table["link"]
    lo = 1 if placement == "line" else 2
    for policy in _policies(P, chunk_cap, lo, placement == "v"):
        try:
            rows, _ = list_schedule(P, M, place, table, link_list, policy)
        except Stalled:
            continue
        consider(rows, f"list cap={policy.cap[0]} late={policy.late_first} "
                       f"w_at={policy.w_first_at and policy.w_first_at[0]} "
                       f"reserve={policy.reserve}")
    if best is None:
        raise ScheduleError(f"zb-auto found no order for P={P}, M={M} under cap={cap}; "
                            f"raise the cap (V placement needs cap >= 1)")
    return best[1]


def _policies(P: int, chunk_cap: int, lo: int, vee: bool):
    """The list scheduler's variants, most promising first. Over 350 cases
    (P in 2..8, five cost shapes, three caps) the winners were nearly always
    the full cap with W only when idle; a cap one or two tighter sometimes
    wins (it keeps a rank from hoarding forwards); the earlier chunk first,
    or W early near the cap, won a handful of times, so they are tried at
    the full cap only."""
    lates = (True, False) if vee else (True,)  # one chunk per rank: no choice to make
    if vee:  # unreserved admission: may stall (skipped), often shorter with the V
        for late in lates:
            yield Policy(split=True, cap=(chunk_cap,) * P, late_first=late, reserve=False)
    for late in lates:
        for w_at in (None, chunk_cap - 1, chunk_cap - 2):
            if w_at is None or w_at >= 1:
                yield Policy(split=True, cap=(chunk_cap,) * P, late_first=late,
                             w_first_at=None if w_at is None else (w_at,) * P)
    for c in (chunk_cap - 1, chunk_cap - 2):
        if c >= lo:
            yield Policy(split=True, cap=(c,) * P)
