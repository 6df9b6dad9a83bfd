"""The cost-aware split against exhaustive enumeration on small cases."""

from __future__ import annotations

import itertools
import random

import pytest

from conveyor.errors import PartitionError
from conveyor.partition import (
    balanced_partition, bottleneck, placed_partition, rank_loads, stage_ranges,
)


def all_balances(L: int, S: int):
    """Every split of L layers into S non-empty contiguous stages."""
    for cuts in itertools.combinations(range(1, L), S - 1):
        ends = (0,) + cuts + (L,)
        yield [ends[i + 1] - ends[i] for i in range(S)]


def brute(times, S, fits=None):
    best = None
    for bal in all_balances(len(times), S):
        if fits is not None and not all(fits(s, r.start, r.stop)
                                        for s, r in enumerate(stage_ranges(bal))):
            continue
        value = bottleneck(times, bal)
        if best is None or value < best:
            best = value
    return best


@pytest.mark.parametrize("seed", range(40))
def test_bottleneck_is_the_exhaustive_minimum(seed):
    rng = random.Random(seed)
    L = rng.randint(1, 9)
    S = rng.randint(1, L)
    times = [rng.choice([rng.randint(0, 20), rng.random() * 10]) for _ in range(L)]
    bal = balanced_partition(times, S)
    assert sum(bal) == L and len(bal) == S and min(bal) >= 1
    assert bottleneck(times, bal) == pytest.approx(brute(times, S), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_memory_limits_per_stage_against_exhaustive(seed):
    """A per-stage limit on a layer-additive memory (stage s keeps ``held[s]``
    copies of its layers' activations, as 1F1B's stage s keeps P-s)."""
    rng = random.Random(100 + seed)
    L = rng.randint(2, 9)
    S = rng.randint(1, min(L, 4))
    times = [rng.randint(1, 10) for _ in range(L)]
    act = [rng.randint(1, 5) for _ in range(L)]
    held = [S - s for s in range(S)]
    limit = rng.randint(5, 30)

    def fits(s, a, b):
        return held[s] * sum(act[a:b]) <= limit

    want = brute(times, S, fits)
    if want is None:
        with pytest.raises(PartitionError, match="fits the memory limit"):
            balanced_partition(times, S, fits=fits)
        return
    bal = balanced_partition(times, S, fits=fits)
    assert all(fits(s, r.start, r.stop) for s, r in enumerate(stage_ranges(bal)))
    assert bottleneck(times, bal) == want


def test_heavy_ends_get_their_own_stages():
    # embedding 6, eight blocks of 1, head 3: the optimum isolates the embedding
    times = [6] + [1] * 8 + [3]
    bal = balanced_partition(times, 4)
    assert bottleneck(times, bal) == 6
    assert bal[0] == 1


@pytest.mark.parametrize("times, S, message", [
    ([1, 2], 3, "cannot split 2 layers into 3 stages"),
    ([1, -1, 2], 2, r"layer 1 has time -1.0"),
    ([1, float("nan")], 2, "layer 1 has time nan"),
])
def test_bad_input_names_the_value(times, S, message):
    with pytest.raises(PartitionError, match=message):
        balanced_partition(times, S)


def test_no_fit_names_the_fix():
    with pytest.raises(PartitionError, match="raise the memory limit, use more stages, or "
                                             "checkpoint"):
        balanced_partition([1, 1, 1], 2, fits=lambda s, a, b: False)


# -- several stages per rank: minimise the largest rank total -----------------------

def brute_placed(times, placement, fits=None):
    best = None
    for bal in all_balances(len(times), len(placement)):
        if fits is not None and not all(fits(s, r.start, r.stop)
                                        for s, r in enumerate(stage_ranges(bal))):
            continue
        value = max(rank_loads(times, bal, placement))
        if best is None or value < best:
            best = value
    return best


def _placement(kind: str, P: int, v: int) -> list[int]:
    if kind == "looped":  # interleaved 1F1B, looped BFS: 0..P-1, 0..P-1, ...
        return [s % P for s in range(P * v)]
    out = []  # V: 0..P-1, P-1..0, ...
    for k in range(v):
        out += list(range(P)) if k % 2 == 0 else list(range(P - 1, -1, -1))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_rank_totals_are_the_exhaustive_minimum(seed):
    rng = random.Random(500 + seed)
    P, v = rng.choice([(2, 2), (2, 3), (3, 2), (4, 2)])
    placement = _placement(rng.choice(["looped", "vee"]), P, v)
    L = rng.randint(len(placement), len(placement) + 5)
    times = [rng.choice([rng.randint(0, 20), rng.random() * 10]) for _ in range(L)]
    fits = None
    if seed % 3 == 0:  # a memory limit on each block too
        act = [rng.randint(1, 5) for _ in range(L)]
        limit = rng.randint(6, 15)
        fits = lambda s, a, b: sum(act[a:b]) <= limit  # noqa: E731
    want = brute_placed(times, placement, fits)
    if want is None:
        with pytest.raises(PartitionError):
            placed_partition(times, placement, fits=fits)
        return
    bal, exact = placed_partition(times, placement, fits=fits)
    assert exact and sum(bal) == L and len(bal) == len(placement) and min(bal) >= 1
    if fits is not None:
        assert all(fits(s, r.start, r.stop) for s, r in enumerate(stage_ranges(bal)))
    assert max(rank_loads(times, bal, placement)) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_rank_totals_beat_the_stage_bottleneck():
    # V on 2 ranks: rank 0 holds stages 0 and 3, rank 1 stages 1 and 2. The
    # min-bottleneck split [2, 2, 2, 2] (stages 5, 8, 7, 4) loads rank 1 with 15.
    times = [3, 2, 4, 4, 3, 4, 3, 1]
    placement = [0, 1, 1, 0]
    stage_best = balanced_partition(times, 4)
    assert rank_loads(times, stage_best, placement) == [9, 15]
    bal, exact = placed_partition(times, placement)
    assert exact and bal == [3, 2, 1, 2] and rank_loads(times, bal, placement) == [13, 11]


def test_a_spent_budget_returns_the_best_found():
    rng = random.Random(7)
    times = [rng.random() for _ in range(400)]
    placement = _placement("looped", 16, 2)
    bal, exact = placed_partition(times, placement, budget=50)
    stage_best = balanced_partition(times, 32)
    assert not exact
    assert max(rank_loads(times, bal, placement)) <= max(rank_loads(times, stage_best,
                                                                    placement))
