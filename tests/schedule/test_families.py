"""The new schedule families against their published formulas.

Expected values come from the formulas (ScheduleSpec.bubble_time, written
from the papers), never from the simulator: the simulated step must equal
work + formula where the formula counts a single step, each rank's own span
must where it counts the steady state, and the step must not exceed it where
the formula is an upper bound.
"""

import pytest

from conveyor.schedule import build_schedule, get_spec
from conveyor.sim import CostModel, simulate

COSTS = [(1, 1, 1), (2, 2, 1), (1, 2, 1), (3, 2, 1), (2, 1, 1)]  # (F, I, W), W <= F, I


def _run(name, P, M, F, I, W, **opt):
    s = build_schedule(name, P, M, **opt)
    v = opt.get("v", 1)
    if v > 1:  # loop placement: F, I, W are a rank's layers, a chunk takes 1/v
        cm = CostModel(forward=F / v, backward=(I + W) / v, input_grad=I / v,
                       weight_grad=W / v)
        work = M * (F + I + W)
    else:
        cm = CostModel(forward=F, backward=I + W, input_grad=I, weight_grad=W)
        work = M * (F + I + W) * (s.S // P)
    return s, simulate(s, cm), work


def _span(t):
    return max(t.rank_events(r)[-1].end - t.rank_events(r)[0].start for r in range(t.P))


CASES = [("1f1b", 1), ("gpipe", 1), ("zb-h1", 1), ("interleaved-1f1b", 2),
         ("interleaved-1f1b", 3), ("looped-bfs", 2), ("looped-bfs", 3)]


@pytest.mark.parametrize("name,v", CASES)
@pytest.mark.parametrize("F,I,W", COSTS)
def test_single_step_formulas(name, v, F, I, W):
    spec = get_spec(name)
    assert spec.scope == "single step"
    opt = {"v": v} if "v" in spec.options else {}
    for P in (1, 2, 3, 4, 8):
        for M in sorted({spec.min_M(P, v), spec.min_M(P, v) + 1, 2 * P + 3, 16}):
            _, t, work = _run(name, P, M, F, I, W, **opt)
            expected = work + spec.bubble_time(P, v, F, I, W)
            assert t.step_time == pytest.approx(expected), (P, M)


@pytest.mark.parametrize("F,I,W", COSTS)
def test_zb_h2_steady_state(F, I, W):
    spec = get_spec("zb-h2")
    assert spec.scope == "steady state"
    for P in (2, 3, 4, 8):
        for M in (2 * P - 1, 2 * P, 3 * P + 1, 24):
            _, t, work = _run("zb-h2", P, M, F, I, W)
            bubble = spec.bubble_time(P, 1, F, I, W)
            assert _span(t) == pytest.approx(work + bubble), (P, M)
            # one step alone also pays the fill: its makespan is at least that
            assert t.step_time >= work + bubble - 1e-9


@pytest.mark.parametrize("F,I,W", COSTS)
def test_dualpipev_within_its_readme_bound(F, I, W):
    spec = get_spec("dualpipev")
    assert spec.scope == "upper bound"
    for P in (2, 3, 4, 8):
        for M in (2 * P, 2 * P + 1, 20):
            _, t, work = _run("dualpipev", P, M, F, I, W)
            bound = work + spec.bubble_time(P, 2, F, I, W)
            assert work < t.step_time <= bound + 1e-9, (P, M)


def test_h1_beats_1f1b_and_h2_beats_h1_by_the_formulas():
    # The differences between the formulas, checked on the simulator: W per
    # stage off 1F1B for H1, another W for H2's steady state.
    P, M, (F, I, W) = 4, 12, (1, 1, 1)
    _, a, _ = _run("1f1b", P, M, F, I, W)
    _, b, _ = _run("zb-h1", P, M, F, I, W)
    _, c, _ = _run("zb-h2", P, M, F, I, W)
    assert a.step_time - b.step_time == (P - 1) * 2 * W
    assert _span(b) - _span(c) == (P - 1) * W


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "zb-h1", "zb-h2", "interleaved-1f1b",
                                  "looped-bfs", "zbv", "dualpipev", "zb-auto"])
def test_memory_bound_holds_and_is_reached(name):
    spec = get_spec(name)
    for P in (1, 2, 3, 4, 8):
        for M in (1, 2, P, 2 * P + 1, 20):
            s = build_schedule(name, P, M)
            peak = max(simulate(s).peak_activations())
            bound = spec.memory(P, M, s.v)
            assert peak <= bound, (P, M, peak, bound)
            if M >= 2 * P + 1 and name != "zb-auto":
                assert peak == bound, (P, M, peak, bound)


def test_every_spec_carries_its_facts():
    from conveyor.schedule import schedule_names
    for name in schedule_names():
        d = get_spec(name).as_dict()
        assert d["summary"] and d["memory"], name
        if get_spec(name).bubble_formula:
            assert d["source"] and d["scope"] and d["holds_for"], name
