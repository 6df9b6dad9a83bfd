"""V-Min, V-Half and v-budget against the published bounds (Qi et al.,
"Pipeline Parallelism with Controllable Memory", NeurIPS 2024).

Memory is asserted in chunk-activations per rank (a chunk is one of a rank's
two stages; two chunk-activations make one micro-batch of a rank's layers,
the unit of 1F1B's bound of P micro-batches on stage 0). The paper's bounds,
in micro-batches: V-Min (P+4)/3, V-Half (P+2)/2; so in chunks at most
2(P+4)/3 and P+2. The expected bubble comes from the paper's figures at
F = I = W: about 2P/3 (V-Min) and P/2 (V-Half) of a rank's work per
micro-batch, against 1F1B's P-1.
"""

import pytest

from conveyor.errors import ScheduleError
from conveyor.schedule import build_schedule, get_spec, validate
from conveyor.schedule.vblocks import blocks
from conveyor.schedule.vshape import budget_range, peak_v_half, peak_v_min
from conveyor.sim import CostModel, simulate


@pytest.mark.parametrize("P", range(1, 65))
def test_steady_peaks_meet_the_papers_bounds(P):
    vmin, vhalf = peak_v_min(P), peak_v_half(P)
    assert 3 * vmin <= 2 * (P + 4)          # V-Min: (P+4)/3 micro-batches
    assert vhalf <= P + 2                   # V-Half: (P+2)/2 micro-batches
    assert vmin <= vhalf <= 2 * P           # never above ZB-V's (and 1F1B's) 2P chunks
    if P >= 6:  # and they really save: below 1F1B's 2P by the paper's factors
        assert vmin <= 2 * P * 0.6 and vhalf <= 2 * P * 0.7


def test_blocks_never_collide_and_respect_dependencies():
    for P in (1, 2, 3, 4, 7, 8):
        for k in (1, 2, 3, 5):
            for b in blocks(P, k):
                for r in range(P):
                    mine = [t for (s, _), t in b.slot.items() if min(s, 2 * P - 1 - s) == r]
                    assert len({t % 6 for t in mine}) == 6, (P, k, r)
                for s in range(2 * P):
                    assert b.slot[(s, "F")] < b.slot[(s, "I")] < b.slot[(s, "W")]
                    if s:
                        assert b.slot[(s - 1, "F")] < b.slot[(s, "F")]
                        assert b.slot[(s, "I")] < b.slot[(s - 1, "I")]


@pytest.mark.parametrize("name,peak", [("v-min", peak_v_min), ("v-half", peak_v_half)])
def test_generated_orders_hold_the_peak_and_reach_it(name, peak):
    spec = get_spec(name)
    for P in (1, 2, 3, 4, 5, 8, 12):
        for M in (1, 2, 3, P, 2 * P + 1, 3 * P + 2):
            s = validate(build_schedule(name, P, M))
            assert s.placement == tuple(range(P)) + tuple(reversed(range(P)))
            assert s.splits_backward
            got = simulate(s).peak_activations()
            assert max(got) <= min(peak(P), 2 * M) == spec.memory(P, M, 2), (P, M, got)
            if M >= 2 * P + 1:  # the steady state is reached: the bound is tight
                assert max(got) == peak(P), (P, M, got)


def _unit(F=1, I=1, W=1):
    return CostModel(forward=F, backward=I + W, input_grad=I, weight_grad=W)


@pytest.mark.parametrize("name", ["v-min", "v-half"])
def test_bubble_within_the_papers_figure_at_equal_costs(name):
    spec = get_spec(name)
    assert spec.scope == "upper bound"
    for P in range(2, 13):
        for M in (2 * P, 2 * P + 3, 4 * P):
            t = simulate(build_schedule(name, P, M), _unit())
            work = 2 * M * 3  # two chunks, F + I + W each
            for r in range(P):
                assert t.step_time - work <= spec.bubble_time(P, 2, 1, 1, 1) + 1e-9, (P, M)
            # and never slower than 1F1B on the same model (a rank's F = 2, B = 4)
            one = simulate(build_schedule("1f1b", P, M), CostModel(forward=2, backward=4))
            assert t.step_time <= one.step_time, (P, M)


def test_v_half_is_no_slower_than_v_min_and_zbv_no_slower_than_both():
    for P in (4, 8):
        for M in (8, 16):
            step = {n: simulate(build_schedule(n, P, M), _unit()).step_time
                    for n in ("v-min", "v-half", "zbv")}
            assert step["zbv"] <= step["v-half"] <= step["v-min"], (P, M, step)


def test_budget_family_spans_v_min_to_zbv():
    P, M = 4, 16
    low, high = budget_range(P)
    assert (low, high) == (peak_v_min(P), 2 * P)
    steps = {}
    for budget in range(low, high + 1):
        s = validate(build_schedule("v-budget", P, M, budget=budget))
        assert max(simulate(s).peak_activations()) <= budget
        steps[budget] = simulate(s, _unit()).step_time
    # at the ends it is as good as the fixed schedules of that memory
    assert steps[low] <= simulate(build_schedule("v-min", P, M), _unit()).step_time
    assert steps[high] <= simulate(build_schedule("zbv", P, M), _unit()).step_time
    assert steps[high] < steps[low]


def test_budget_uses_the_costs_it_is_given():
    # W twice F: the order the budget family keeps is timed under these costs,
    # so it is no slower than v-half's order under them
    cm = CostModel(forward=1, backward=3, input_grad=1, weight_grad=2)
    s = build_schedule("v-budget", 4, 12, budget=peak_v_half(4), costs=cm)
    half = build_schedule("v-half", 4, 12)
    assert simulate(s, cm).step_time <= simulate(half, cm).step_time


def test_budget_below_v_min_names_the_least():
    with pytest.raises(ScheduleError, match=r"below .* v-min's 4; raise it to at least 4"):
        build_schedule("v-budget", 4, 8, budget=3)
    with pytest.raises(ScheduleError, match="integer number of chunk-activations"):
        build_schedule("v-budget", 4, 8, budget=2.5)
