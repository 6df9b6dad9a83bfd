import pytest

from conveyor.errors import TimelineError
from conveyor.schedule import F, B, build_schedule
from conveyor.sim import Timeline, simulate
from conveyor.views.measured import match_schedule, measured_costs, measured_section

from tests.views.helpers import measured_like, registered_vshape


def test_a_run_matches_its_schedule():
    tl = measured_like("1f1b", 4, 8)
    sched = match_schedule(tl, schedule="1f1b", P=4, M=8)
    assert sched.name == "1f1b" and sched.P == 4 and sched.M == 8


@pytest.mark.parametrize("asked, match", [
    (dict(P=8), "recorded with P=4 but P=8 was requested"),
    (dict(M=3), "recorded with M=8 but M=3 was requested"),
    (dict(schedule="1f1b"), "recorded with schedule='gpipe' but schedule='1f1b'"),
])
def test_asking_for_another_configuration_is_refused(asked, match):
    with pytest.raises(TimelineError, match=match):
        match_schedule(measured_like("gpipe", 4, 8), **asked)


def test_a_p_that_does_not_fit_the_schedule_is_refused():
    d = measured_like("gpipe", 4, 8).to_dict()
    d["P"] = 8  # the file claims 8 ranks but holds 4 stages
    with pytest.raises(TimelineError, match="has S=4 stages but schedule 'gpipe' with P=8"):
        match_schedule(Timeline.from_dict(d))


def test_events_that_are_not_the_schedule_are_refused():
    tl = measured_like("gpipe", 4, 8)
    tl.events = tl.events[:-1]
    with pytest.raises(TimelineError, match="is missing"):
        match_schedule(tl)
    other = measured_like("1f1b", 4, 8)
    other.schedule = "naive"
    with pytest.raises(TimelineError, match="is not in the schedule"):
        match_schedule(other)
    unknown = measured_like("gpipe", 2, 2)
    unknown.schedule = "gpipes"
    with pytest.raises(TimelineError, match="unknown schedule 'gpipes'"):
        match_schedule(unknown)


def test_measured_costs_are_the_per_stage_means():
    tl = measured_like("gpipe", 3, 6, jitter=0.3)
    costs = measured_costs(tl).table(3)
    for s in range(3):
        f = [e.duration for e in tl.events if e.action.stage == s and e.action.kind == F]
        b = [e.duration for e in tl.events if e.action.stage == s and e.action.kind == B]
        assert costs[F][s] == pytest.approx(sum(f) / len(f))
        assert costs[B][s] == pytest.approx(sum(b) / len(b))


def test_split_backward_costs_are_kept_apart():
    with registered_vshape():
        tl = measured_like("test-vshape", 2, 3)
        costs = measured_costs(tl).table(4)
        assert costs["I"] != costs["W"]
        assert costs[B] == pytest.approx([i + w for i, w in zip(costs["I"], costs["W"])])
        section = measured_section(tl)
        assert section["S"] == 4 and section["placement"] == [0, 1, 1, 0]


def test_section_puts_measured_beside_its_simulation():
    tl = measured_like("1f1b", 4, 8, seed=3)
    sec = measured_section(tl, source="/some/dir/run.json")
    assert sec["file"] == "run.json" and sec["unit"] == "s"
    m, s = sec["measured"], sec["simulated"]
    assert len(m["events"]) == len(s["events"]) == 64
    assert m["events"][0][2] == 0.0                    # shifted to start at 0
    assert m["T"] == pytest.approx(tl.step_time) and m["bubble"] == round(tl.bubble_overall, 6)
    sim = simulate(build_schedule("1f1b", 4, 8), measured_costs(tl))
    assert s["T"] == pytest.approx(sim.step_time)
    assert s["bubble"] == round(sim.bubble_overall, 6)
