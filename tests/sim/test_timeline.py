import json

import pytest

from conveyor.errors import TimelineError
from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, Timeline, load_timeline, simulate


def test_round_trip_through_a_file(tmp_path):
    t = simulate(build_schedule("1f1b", 3, 4), CostModel(forward=[1, 2, 1], backward=2))
    back = load_timeline(t.save(tmp_path / "t.json"))
    assert back.events == t.events
    assert back.summary() == t.summary()
    assert back.stage_costs() == {"F": [1.0, 2.0, 1.0], "B": [2.0, 2.0, 2.0]}


def test_idle_intervals_add_up_to_the_bubble():
    t = simulate(build_schedule("gpipe", 4, 3), CostModel(forward=1, backward=1))
    for r in range(4):
        idle = sum(b - a for a, b in t.idle_intervals(r))
        assert idle == pytest.approx(t.bubble(r) * t.step_time)
    # rank 0 idles while the wave goes down and up: 2*(P-1) slots, in one gap
    assert t.idle_intervals(0) == [(3.0, 9.0)]


def test_waits_are_not_busy():
    t = simulate(build_schedule("gpipe", 2, 1), CostModel(forward=1, backward=1))
    d = t.to_dict()
    d["events"].append([1, "1RECV_F0", 0.0, 1.0])
    t2 = Timeline.from_dict(d)
    assert t2.busy(1) == t.busy(1) and t2.bubble(1) == t.bubble(1)


@pytest.mark.parametrize("text,pattern", [
    ("{broken", "is not valid JSON"),
    ('{"P": 2}', "missing field"),
    ('{"P": 0, "M": 1, "S": 1, "schedule": "x", "events": []}', "P must be a positive integer, got 0"),
    ('{"P": 1, "M": 1, "S": 1, "schedule": "x", "events": [[0, "0Q0", 0, 1]]}', "event 0"),
    ('{"P": 1, "M": 1, "S": 1, "schedule": "x", "events": [[3, "0F0", 0, 1]]}', "rank 3"),
    ('{"P": 1, "M": 1, "S": 1, "schedule": "x", "events": [[0, "0F0", 2, 1]]}', "end >= start"),
    ('{"P": 1, "M": 1, "S": 1, "schedule": "x", "events": [[0, "0F5", 0, 1]]}', "outside"),
])
def test_bad_timeline_files(tmp_path, text, pattern):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(TimelineError, match=pattern):
        load_timeline(path)


def test_missing_file(tmp_path):
    with pytest.raises(TimelineError, match="cannot read timeline"):
        load_timeline(tmp_path / "nope.json")


def test_summary_is_json():
    t = simulate(build_schedule("naive", 2, 1))
    assert json.loads(json.dumps(t.to_dict()))["metrics"]["bubble"] == pytest.approx(0.5)
