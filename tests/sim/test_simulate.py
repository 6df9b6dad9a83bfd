import math
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from conveyor.errors import CostModelError, ValidationError
from conveyor.schedule import add_comms, build_schedule
from conveyor.schedule.deps import Dependencies
from conveyor.schedule.ir import schedule_from_rows
from conveyor.sim import CostModel, formula_bubble, simulate

UNIT = CostModel(forward=1, backward=1)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_bubble_matches_formula_for_all_small_pipelines(name):
    # The seed's count: (P-1)/(M+P-1), for every P in 1..16 and M in 1..64.
    for P in range(1, 17):
        for M in range(1, 65):
            t = simulate(build_schedule(name, P, M), UNIT, check=False)
            expected = (P - 1) / (M + P - 1)
            assert math.isclose(t.bubble_overall, expected, abs_tol=1e-12), (P, M)
            assert t.step_time == 2 * (M + P - 1)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_bubble_formula_holds_when_backward_costs_twice_forward(name):
    for P, M in [(2, 3), (4, 8), (8, 5), (5, 32)]:
        t = simulate(build_schedule(name, P, M), CostModel(forward=1, backward=2))
        assert math.isclose(t.bubble_overall, float(formula_bubble(name, P, M)))
        assert all(math.isclose(b, t.bubble_overall) for b in t.bubbles())


def test_seed_numbers():
    assert formula_bubble("gpipe", 4, 1) == Fraction(3, 4)
    assert formula_bubble("gpipe", 4, 32) == Fraction(3, 35)
    assert formula_bubble("naive", 4, 32) == Fraction(3, 4)
    t = simulate(build_schedule("naive", 4, 32))
    assert math.isclose(t.bubble_overall, 0.75)


@pytest.mark.parametrize("P,M", [(1, 1), (4, 2), (4, 8), (6, 3), (8, 16)])
def test_peak_activations(P, M):
    one = simulate(build_schedule("1f1b", P, M)).peak_activations()
    assert one == [min(P - s, M) for s in range(P)]
    assert simulate(build_schedule("gpipe", P, M)).peak_activations() == [M] * P


def test_per_stage_costs_and_slowest_stage_sets_the_pace():
    # Stage 2 is three times slower: in steady state every rank waits for it.
    costs = CostModel(forward=[1, 1, 3, 1], backward=[2, 2, 6, 2])
    t = simulate(build_schedule("1f1b", 4, 16), costs)
    assert t.bubble(2) < min(t.bubble(r) for r in (0, 1, 3))
    assert t.step_time >= 16 * (3 + 6)


def test_link_latency_adds_to_each_crossing():
    P, M, d = 4, 8, 0.5
    base = simulate(build_schedule("gpipe", P, M), UNIT)
    slow = simulate(build_schedule("gpipe", P, M), CostModel(forward=1, backward=1, latency=d))
    # The fill and the drain each cross P-1 cuts once more per step.
    assert math.isclose(slow.step_time, base.step_time + 2 * (P - 1) * d)
    by_bw = simulate(build_schedule("gpipe", P, M),
                     CostModel(forward=1, backward=1, activation_bytes=100, bandwidth=200))
    assert math.isclose(by_bw.step_time, slow.step_time)


def test_lowered_schedule_simulates_the_same():
    for name in ("gpipe", "1f1b"):
        s = build_schedule(name, 4, 6)
        costs = CostModel(forward=[1, 2, 1, 1], backward=2, latency=0.25)
        a, b = simulate(s, costs), simulate(add_comms(s), costs)
        assert math.isclose(a.step_time, b.step_time)
        assert a.bubbles() == pytest.approx(b.bubbles())


def test_broken_schedule_raises_instead_of_a_partial_timeline():
    s = schedule_from_rows("broken", [["0F0", "0B0", "0F1", "0B1"], ["1F1", "1B1", "1F0", "1B0"]])
    with pytest.raises(ValidationError, match="deadlock"):
        simulate(s)
    with pytest.raises(ValidationError, match="cannot finish"):
        simulate(s, check=False)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(forward=-1), "forward=-1"),
    (dict(backward=float("nan")), "backward=nan"),
    (dict(latency=float("inf")), "latency=inf"),
    (dict(bandwidth=0), "bandwidth=0"),
    (dict(forward="fast"), "forward='fast'"),
])
def test_bad_costs(kwargs, pattern):
    with pytest.raises(CostModelError, match=pattern):
        CostModel(**kwargs)


def test_per_stage_list_must_match_stages():
    with pytest.raises(CostModelError, match="3 values but the schedule has 4 stages"):
        simulate(build_schedule("gpipe", 4, 2), CostModel(forward=[1, 1, 1]))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["naive", "gpipe", "1f1b"]), st.integers(1, 6), st.integers(1, 12),
       st.data())
def test_timeline_respects_every_dependency(name, P, M, data):
    fwd = data.draw(st.lists(st.floats(0.1, 5), min_size=P, max_size=P))
    bwd = data.draw(st.lists(st.floats(0.1, 5), min_size=P, max_size=P))
    latency = data.draw(st.floats(0, 2))
    s = build_schedule(name, P, M)
    t = simulate(s, CostModel(forward=fwd, backward=bwd, latency=latency))
    start = {e.action: e.start for e in t.events}
    end = {e.action: e.end for e in t.events}
    deps = Dependencies(s)
    for e in t.events:
        for d, cut in deps(e.action):
            assert e.start >= end[d] + (latency if cut is not None else 0) - 1e-9
    for r in range(P):  # a rank does one thing at a time, in its list's order
        evs = t.rank_events(r)
        assert [ev.action for ev in evs] == list(s.actions[r])
        assert all(a.end <= b.start + 1e-9 for a, b in zip(evs, evs[1:]))
    assert 0 <= t.bubble_overall < 1
    assert t.step_time >= max(t.busy(r) for r in range(P)) - 1e-9
    assert len(start) == len(s)


def test_split_backward_and_two_chunks_per_rank_simulate():
    # A hand-written V-shaped schedule (stages 0,3 on rank 0; 1,2 on rank 1) whose
    # backward is split into I and W: the IR, validator and simulator take it as is.
    from conveyor.schedule import validate
    from conveyor.schedule.ir import v_placement
    rows = [["0F0", "3F0", "3I0", "0I0", "3W0", "0W0"],
            ["1F0", "2F0", "2I0", "1I0", "2W0", "1W0"]]
    s = schedule_from_rows("v-zb", rows, placement=v_placement(2))
    validate(add_comms(s))
    t = simulate(s, CostModel(forward=1, backward=2))  # I = W = 1
    # the chain F down and I back up is 8 slots; rank 0 then runs its two W (1 each)
    assert t.step_time == 10
    assert t.peak_activations() == [2, 2]
    assert {e.action.kind for e in t.events} == {"F", "I", "W"}
