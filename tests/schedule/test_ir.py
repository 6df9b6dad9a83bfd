import pytest
from hypothesis import given, strategies as st, settings

from conveyor.errors import ScheduleError
from conveyor.schedule.ir import KINDS, Action, Schedule, loop_placement, v_placement


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.integers(0, 10_000), st.sampled_from(KINDS), st.integers(0, 10_000))
def test_text_form_round_trips(stage, kind, mb):
    a = Action(stage, kind, mb)
    assert Action.parse(str(a)) == a


def test_text_form_examples():
    assert str(Action(2, "F", 5)) == "2F5"
    assert Action.parse("0SEND_B3") == Action(0, "SEND_B", 3)
    assert Action.parse(" 12W7 ") == Action(12, "W", 7)


@pytest.mark.parametrize("text", ["", "F0", "2X5", "2F", "-1F0", "2F5x", "1UNSHARD"])
def test_parse_rejects_non_actions(text):
    with pytest.raises(ScheduleError, match="not an action"):
        Action.parse(text)


@pytest.mark.parametrize("P,M", [(0, 1), (1, 0), (-3, 4), (2.5, 4), (True, 4)])
def test_schedule_rejects_bad_counts(P, M):
    with pytest.raises(ScheduleError, match="positive integer"):
        Schedule("x", P, M, ())


def test_rows_must_match_P():
    with pytest.raises(ScheduleError, match="2 rank rows but P=3"):
        Schedule("x", 3, 1, ((), ()))


def test_placements():
    assert loop_placement(3, 2) == (0, 1, 2, 0, 1, 2)
    assert v_placement(3) == (0, 1, 2, 2, 1, 0)
    s = Schedule("v", 3, 1, ((), (), ()), placement=v_placement(3))
    assert s.S == 6 and s.v == 2
    assert s.stages_of(0) == (0, 5) and s.rank_of(4) == 1
