"""Several chunks per rank in a loop (stage s on rank s mod P): Megatron's
interleaved 1F1B and breadth-first looped schedules.

With v chunks per rank, each chunk is 1/v of a rank's layers, so under the
same model a chunk's F and B cost F/v and B/v. Both schedules accept any
M >= 1; see each docstring for what changes when M is not a multiple of P.
"""

from __future__ import annotations

from conveyor.errors import ScheduleError
from conveyor.limits import check_size
from conveyor.schedule.ir import B, F, Action, Schedule, check_counts, loop_placement

__all__ = ["interleaved_1f1b", "looped_bfs", "check_chunks", "rounds"]


def check_chunks(v, *, least: int = 1, P: int | None = None, M: int | None = None) -> int:
    """Raise ScheduleError unless v (chunks per rank) is an integer >= least
    and, given P and M, the P x v stages and their cells are within
    ``conveyor.limits`` (checked before any action is made)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ScheduleError(f"v (chunks per rank) must be an integer >= {least}, got {v!r}; "
                            f"use --chunks {max(least, 2)}")
    if P is not None and M is not None:
        check_size(P, M, S=P * v)
    return v


def rounds(P: int, M: int) -> list[list[int]]:
    """Micro-batches in consecutive groups, each of at least P where M >= P.

    Megatron runs each chunk over a group of P micro-batches before moving on;
    when P does not divide M, the remainder is spread one each over the first
    groups (M = 6, P = 4 gives one group of 6), so no group is short.
    """
    n = max(1, M // P)
    base, extra = divmod(M, n)
    out, mb = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(list(range(mb, mb + size)))
        mb += size
    return out


def interleaved_1f1b(P: int, M: int, *, v: int = 2) -> Schedule:
    """Megatron-LM's interleaved 1F1B (Narayanan et al., SC'21).

    Rank r holds stages r, P+r, ..., (v-1)P+r. Forwards go round by round
    (a round is a group of micro-batches, see ``rounds``): chunk 0 over the
    round, then chunk 1, and so on; backwards go the same way with chunks in
    reverse. Rank r warms up with 2(P-r-1) + (v-1)g forwards (g: the first
    round's size), then alternates one forward and one backward, then drains.
    At most that warm-up plus one chunk-activations are held on rank r.

    M < P: a single short round; the order stays valid, the bubble is larger
    than the formula's (the pipeline never fills).
    """
    check_counts(P, M)
    check_chunks(v, P=P, M=M)
    groups = rounds(P, M)
    fwd, bwd = [], []
    for g in groups:
        for c in range(v):
            fwd += [(c, mb) for mb in g]
        for c in reversed(range(v)):
            bwd += [(c, mb) for mb in g]
    n = M * v
    rows = []
    for r in range(P):
        warm = min(n, 2 * (P - r - 1) + (v - 1) * len(groups[0]))
        row = [Action(c * P + r, F, mb) for c, mb in fwd[:warm]]
        for k in range(n - warm):
            c, mb = fwd[warm + k]
            row.append(Action(c * P + r, F, mb))
            c, mb = bwd[k]
            row.append(Action(c * P + r, B, mb))
        row += [Action(c * P + r, B, mb) for c, mb in bwd[n - warm:]]
        rows.append(tuple(row))
    return Schedule("interleaved-1f1b", P, M, tuple(rows), loop_placement(P, v), meta={"v": v})


def looped_bfs(P: int, M: int, *, v: int = 2) -> Schedule:
    """Breadth-first looped schedule (Lamy-Poirier, 2023): every micro-batch
    through chunk 0, then chunk 1, ...; then all backwards, last chunk first.

    Any M works; with M < P a rank waits for the loop to come round, so the
    bubble grows beyond the formula. Holds all M*v chunk-activations.
    """
    check_counts(P, M)
    check_chunks(v, P=P, M=M)
    rows = []
    for r in range(P):
        row = [Action(c * P + r, F, mb) for c in range(v) for mb in range(M)]
        row += [Action(c * P + r, B, mb) for c in reversed(range(v)) for mb in range(M)]
        rows.append(tuple(row))
    return Schedule("looped-bfs", P, M, tuple(rows), loop_placement(P, v), meta={"v": v})
