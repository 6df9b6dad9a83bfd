"""V-Min, V-Half and the memory-budgeted V family (Qi et al., "Pipeline
Parallelism with Controllable Memory", NeurIPS 2024), built from the V
building blocks of ``conveyor.schedule.vblocks``.

All three place stages r and 2P-1-r on rank r and split the backward into I
and W. Memory is counted in chunk-activations per rank (a chunk is one of a
rank's two stages, so two chunk-activations are one micro-batch of a whole
rank's layers, the unit of 1F1B's bound of P):

    v-min     the k = 1 blocks: at most 2(P+4)/3 chunks ((P+4)/3 micro-batches)
    v-half    the k = 2 blocks: at most P+2 chunks ((P+2)/2 micro-batches)
    v-budget  the fastest block of any k whose steady peak fits ``budget``
              chunks, reordered to use all of it

The paper's bounds are met for every P (tests/schedule/test_vshape.py walks
P = 1..64); ``peak_v_min(P)`` and ``peak_v_half(P)`` give the exact peak of
the generated schedules once M is large enough to reach the steady state.

Among the blocks of the wanted k with the least steady peak, the generator
keeps the one whose reordered order is shortest with every pass one slot
long (the paper's setting, F = I = W per chunk); ties go to the first. The
choice is made at min(M, 2P+2) micro-batches (the warm-up and cool-down it
decides are the same for any larger M) and then built at M. V-Min and V-Half
reorder with ``list_reorder`` alone (the grid reordering gained 0.3 % of the
span over P = 4..16, M = 1..64, at five times the time); v-budget tries both
for k >= 3, which gain more from it (up to 7 %), on schedules of up to 3,000
passes.
"""

from __future__ import annotations

from functools import lru_cache

from conveyor.errors import ScheduleError
from conveyor.schedule.deps import replay
from conveyor.schedule.ir import Schedule, check_counts, v_placement
from conveyor.schedule.vblocks import Block, blocks
from conveyor.schedule.vreorder import build_from_block

__all__ = ["v_min", "v_half", "v_budget", "peak_v_min", "peak_v_half", "budget_range"]

_KS = (1, 2, 3, 4, 5)


@lru_cache(maxsize=256)
def _least(P: int, k: int) -> tuple[Block, ...]:
    """The blocks of offset k with the least steady peak (empty if none)."""
    bs = blocks(P, k)
    if not bs:
        return ()
    low = min(b.peak for b in bs)
    return tuple(b for b in bs if b.peak == low)


def peak_v_min(P: int) -> int:
    """Chunk-activations V-Min holds per rank in its steady state."""
    return _least(P, 1)[0].peak


def peak_v_half(P: int) -> int:
    """Chunk-activations V-Half holds per rank in its steady state."""
    return _least(P, 2)[0].peak


def budget_range(P: int) -> tuple[int, int]:
    """(least, most) useful budget in chunk-activations: V-Min's peak, and
    ZB-V's 2P (more buys nothing: a rank then holds every chunk it can use)."""
    return peak_v_min(P), 2 * P


def _pick(P: int, M: int, k: int, cap: int) -> Block:
    """Of the least-peak blocks of offset k, the one whose order is shortest
    (at min(M, 2P+2) micro-batches; see the module doc)."""
    return _pick_at(P, min(M, 2 * P + 2), k, cap)


@lru_cache(maxsize=256)
def _pick_at(P: int, M: int, k: int, cap: int) -> Block:
    cands = _least(P, k)
    if len(cands) == 1:
        return cands[0]
    return min(cands, key=lambda b: build_from_block(b, M, cap, grid_limit=0)[1])


def _schedule(name: str, P: int, M: int, block: Block, cap: int, meta: dict,
              grid_limit: int = 0) -> Schedule:
    rows, _ = build_from_block(block, M, cap, grid_limit=grid_limit)
    meta = dict(meta, v=2, k=block.k, residues=list(block.residues), cap=cap)
    return Schedule(name, P, M, tuple(map(tuple, rows)), v_placement(P), meta=meta)


def v_min(P: int, M: int) -> Schedule:
    """V-Min: the V blocks of least lifespan (k = 1). At most 2(P+4)/3
    chunk-activations per rank, about a third of 1F1B's; bubble about 2/3 of
    1F1B's at F = I = W. Any M >= 1."""
    check_counts(P, M)
    cap = peak_v_min(P)
    return _schedule("v-min", P, M, _pick(P, M, 1, cap), cap, {})


def v_half(P: int, M: int) -> Schedule:
    """V-Half: the V blocks with k = 2. At most P+2 chunk-activations per rank,
    about half of 1F1B's; bubble about half of 1F1B's at F = I = W. Any M >= 1."""
    check_counts(P, M)
    cap = peak_v_half(P)
    return _schedule("v-half", P, M, _pick(P, M, 2, cap), cap, {})


def v_budget(P: int, M: int, *, budget: int | None = None, costs=None) -> Schedule:
    """The shortest V order found within ``budget`` chunk-activations per rank
    (default: V-Half's peak), from V-Min's peak up to 2P (ZB-V's).

    The two largest block offsets k whose least steady peak fits the budget
    (a larger k holds more and idles less; the next one down is tried too,
    as the budget is the cap of either) are built, reordered with the whole
    budget as their cap, and timed under ``costs`` (a conveyor.sim.CostModel;
    default one slot per pass); the shorter wins, ties to the smaller k.
    Raises ScheduleError, naming V-Min's peak, when the budget is below it."""
    check_counts(P, M)
    low, high = budget_range(P)
    if budget is None:
        budget = peak_v_half(P)
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ScheduleError(f"v-budget budget must be an integer number of chunk-activations "
                            f"per rank, got {budget!r}; use {low} (V-Min) to {high} (ZB-V)")
    if budget < low:
        raise ScheduleError(
            f"v-budget: a budget of {budget} chunk-activations per rank is below the least a "
            f"V schedule holds at P={P}: v-min's {low}; raise it to at least {low}")
    cap = min(budget, high)
    duration = link = None
    if costs is not None:
        duration, link = costs.duration_fn(2 * P)
    best: tuple[float, int, Schedule] | None = None
    fitting = [k for k in _KS if _least(P, k) and _least(P, k)[0].peak <= cap]
    for k in fitting[-2:]:
        sched = _schedule("v-budget", P, M, _pick(P, M, k, cap), cap, {"budget": budget},
                          grid_limit=3_000 if k >= 3 else 0)
        if duration is None:
            t = max(replay(sched, lambda r, a: 1.0).ends)
        else:
            t = max(replay(sched, duration, link).ends)
        if best is None or t < best[0] - 1e-9:
            best = (t, k, sched)
    assert best is not None  # k = 1 fits any budget >= low
    return best[2]
