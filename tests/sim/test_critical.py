"""The critical path of a simulated step (conveyor.sim.critical)."""

import random

import pytest

from conveyor.errors import TimelineError
from conveyor.schedule import Action, add_comms, build_schedule, schedule_names
from conveyor.sim import CostModel, bindings, critical_path, simulate


def test_known_path_of_1f1b_with_a_link_latency():
    # P = 2, M = 2, F = 1, B = 2, latency 0.5: 0F0 -> (link) 1F0, rank 1 busy
    # with 1B0, 1F1, 1B1, then the gradient crosses back to 0B1, which ends the step.
    s, c = build_schedule("1f1b", 2, 2), CostModel(forward=1, backward=2, latency=0.5)
    tl = simulate(s, c)
    path = critical_path(s, tl, c)
    assert [(b.rank, str(b.action), b.via) for b in path] == [
        (0, "0F0", "start"), (1, "1F0", "data"), (1, "1B0", "rank"), (1, "1F1", "rank"),
        (1, "1B1", "rank"), (0, "0B1", "data")]
    assert [b.link for b in path] == [0, 0.5, 0, 0, 0, 0.5]
    assert path[-1].end == tl.step_time == 10


def test_gpipe_fill_waits_for_the_previous_stage():
    s = build_schedule("gpipe", 4, 8).without_backward()
    tl = simulate(s, CostModel(forward=1))
    why = bindings(s, tl, CostModel(forward=1))
    # rank 3's first forward waited for stage 2's forward of micro-batch 0
    assert why[Action(3, "F", 0)].via == "data"
    assert why[Action(3, "F", 0)].waited_for == Action(2, "F", 0)
    assert why[Action(0, "F", 1)].via == "rank" and why[Action(0, "F", 0)].via == "start"


def _random_costs(rng, S):
    def per(lo, hi):
        return [round(rng.uniform(lo, hi), 3) for _ in range(S)] if rng.random() < 0.5 \
            else round(rng.uniform(lo, hi), 3)
    f, i, w = per(0.2, 2), per(0.2, 2), per(0, 1.5)
    b = [x + y for x, y in zip(i, w)] if isinstance(i, list) and isinstance(w, list) else None
    if b is None:
        i = i if isinstance(i, list) else [i] * S
        w = w if isinstance(w, list) else [w] * S
        b = [x + y for x, y in zip(i, w)]
    return CostModel(forward=f, backward=b, input_grad=i, weight_grad=w,
                     latency=rng.choice([0, 0.25, round(rng.uniform(0, 1), 3)]))


@pytest.mark.parametrize("seed", range(6))
def test_path_has_no_slack_and_spans_the_step(seed):
    # Whatever the schedule and costs: the path starts at 0, each action starts
    # exactly when the one before it ends (plus the link it crossed), and the
    # last one ends the step, so its work and links add up to the step time.
    rng = random.Random(seed)
    for name in schedule_names():
        P, M = rng.randint(1, 6), rng.randint(1, 12)
        s = build_schedule(name, P, M)
        c = _random_costs(rng, s.S)
        tl = simulate(s, c)
        path = critical_path(s, tl, c)
        assert path[0].via == "start" and path[0].start == 0
        for a, b in zip(path, path[1:]):
            assert b.waited_for == a.action
            assert b.start == a.end + b.link
            if b.via == "rank":
                assert b.rank == a.rank and b.link == 0
        assert path[-1].end == tl.step_time
        total = sum(b.end - b.start + b.link for b in path)
        assert total == pytest.approx(tl.step_time, rel=1e-12)   # float sums round per term


def test_schedule_with_comm_actions_puts_the_transfers_on_the_path():
    s = add_comms(build_schedule("gpipe", 3, 2))
    c = CostModel(forward=1, backward=2, latency=0.25)
    path = critical_path(s, simulate(s, c), c)
    kinds = [b.action.kind for b in path]
    assert "RECV_F" in kinds and "SEND_F" in kinds
    assert path[-1].end == simulate(s, c).step_time


def test_a_timeline_of_other_costs_is_refused():
    s = build_schedule("1f1b", 3, 4)
    tl = simulate(s, CostModel(forward=1, backward=2))
    with pytest.raises(TimelineError, match="not schedule '1f1b' simulated under these costs"):
        bindings(s, tl, CostModel(forward=1, backward=2, latency=1))
