"""zb-auto against the fixed schedules, under the same costs and memory cap."""

import pytest

from conveyor.errors import ScheduleError
from conveyor.schedule import add_comms, build_schedule, get_spec, validate
from conveyor.sim import CostModel, simulate


def _step(schedule, costs):
    return simulate(schedule, costs).step_time


def _unequal(S, slow_last=True, latency=0.0):
    f = [1.0] * S
    i = [1.0] * S
    w = [1.0] * S
    if slow_last:
        f[-1], i[-1], w[-1] = 1.5, 1.5, 1.5
    return CostModel(forward=f, backward=[a + b for a, b in zip(i, w)], input_grad=i,
                     weight_grad=w, latency=latency)


@pytest.mark.parametrize("P,M", [(2, 4), (4, 8), (4, 5), (8, 16)])
def test_equal_costs_match_zb_h2_and_zbv_within_one_slot(P, M):
    costs = CostModel(forward=1, backward=2)
    auto = build_schedule("zb-auto", P, M, costs=costs, cap=2 * P - 1)
    assert _step(auto, costs) <= _step(build_schedule("zb-h2", P, M), costs) + 1
    auto_v = build_schedule("zb-auto", P, M, costs=costs, cap=P, placement="v")
    assert _step(auto_v, costs) <= _step(build_schedule("zbv", P, M), costs) + 1
    assert max(simulate(auto_v, costs).peak_activations()) <= 2 * P


@pytest.mark.parametrize("P,M", [(2, 3), (4, 8), (4, 6), (6, 12), (8, 16)])
@pytest.mark.parametrize("case", ["slow last stage", "latency half an F", "both"])
def test_unequal_costs_no_worse_than_best_fixed_under_same_cap(P, M, case):
    slow = case != "latency half an F"
    lat = 0.5 if case != "slow last stage" else 0.0
    line, vee = _unequal(P, slow, lat), _unequal(2 * P, slow, lat)
    for cap in (P, 2 * P - 1):
        fixed = [n for n in ("1f1b", "zb-h1", "zb-h2")
                 if get_spec(n).memory(P, M, 1) <= cap]
        best = min(_step(build_schedule(n, P, M), line) for n in fixed)
        auto = build_schedule("zb-auto", P, M, costs=line, cap=cap)
        assert max(simulate(auto, line).peak_activations()) <= cap
        assert _step(auto, line) <= best + 1e-9, (cap, fixed)
    v_fixed = [n for n in ("zbv", "dualpipev") if get_spec(n).memory(P, M, 2) <= 2 * (P + 1)]
    best_v = min(_step(build_schedule(n, P, M), vee) for n in v_fixed)
    auto_v = build_schedule("zb-auto", P, M, costs=vee, cap=P + 1, placement="v")
    assert _step(auto_v, vee) <= best_v + 1e-9
    validate(add_comms(auto_v))


def test_bad_options_are_named():
    with pytest.raises(ScheduleError, match="cap must be an integer >= 1"):
        build_schedule("zb-auto", 4, 8, cap=0)
    with pytest.raises(ScheduleError, match="placement 'zigzag'"):
        build_schedule("zb-auto", 4, 8, placement="zigzag")


def test_beats_zb_h1_when_links_are_slow():
    # With a link latency of a whole F, ZB-H1's fixed warm-up leaves each rank
    # waiting; the list scheduler, planning with the latency, fills it.
    for P, M in ((4, 8), (8, 16)):
        costs = CostModel(forward=1, backward=2, latency=1.0)
        auto = build_schedule("zb-auto", P, M, costs=costs, cap=P)
        assert max(simulate(auto, costs).peak_activations()) <= P
        assert _step(auto, costs) < _step(build_schedule("zb-h1", P, M), costs)
        assert auto.meta["candidate"].startswith("list")
