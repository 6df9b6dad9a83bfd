"""The list scheduler: its order replays to the times it planned with, keeps
its cap, and is valid."""

from hypothesis import given, settings, strategies as st

from conveyor.schedule import add_comms, validate
from conveyor.schedule.ir import Schedule, v_placement
from conveyor.schedule.listsched import Policy, list_schedule
from conveyor.sim import CostModel, simulate

cost = st.sampled_from([0.5, 1.0, 1.5, 2.0])


@settings(deadline=None, max_examples=25, derandomize=True)
@given(P=st.integers(1, 5), M=st.integers(1, 9), vee=st.booleans(), late=st.booleans(),
       slack=st.integers(0, 2), f=cost, i=cost, w=cost, lat=st.sampled_from([0.0, 0.5]))
def test_order_replays_to_its_plan_within_its_cap(P, M, vee, late, slack, f, i, w, lat):
    place = v_placement(P) if vee else tuple(range(P))
    S = len(place)
    costs = CostModel(forward=f, backward=i + w, input_grad=i, weight_grad=w, latency=lat)
    cap = (2 if vee else 1) * P - slack if (2 if vee else 1) * P - slack >= (2 if vee else 1) \
        else (2 if vee else 1)
    t = costs.table(S)
    rows, makespan = list_schedule(P, M, place, t, t["link"],
                                   Policy(split=True, cap=(cap,) * P, late_first=late))
    s = validate(add_comms(Schedule("listed", P, M, tuple(map(tuple, rows)), place)))
    timeline = simulate(s, costs)
    assert abs(timeline.step_time - makespan) < 1e-9
    assert max(timeline.peak_activations()) <= cap
