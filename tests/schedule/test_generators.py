import pytest
from hypothesis import given, strategies as st, settings

from conveyor.errors import ScheduleError
from conveyor.schedule import build_schedule, get_spec, schedule_names, validate


def grid(schedule):
    return [" ".join(row) for row in schedule.text_rows()]


def test_gpipe_grid():
    assert grid(build_schedule("gpipe", 3, 2)) == [
        "0F0 0F1 0B0 0B1",
        "1F0 1F1 1B0 1B1",
        "2F0 2F1 2B0 2B1",
    ]


def test_1f1b_grid():
    assert grid(build_schedule("1f1b", 3, 4)) == [
        "0F0 0F1 0F2 0B0 0F3 0B1 0B2 0B3",
        "1F0 1F1 1B0 1F2 1B1 1F3 1B2 1B3",
        "2F0 2B0 2F1 2B1 2F2 2B2 2F3 2B3",
    ]


def test_1f1b_with_fewer_microbatches_than_stages():
    assert grid(build_schedule("1f1b", 4, 2)) == [
        "0F0 0F1 0B0 0B1",
        "1F0 1F1 1B0 1B1",
        "2F0 2F1 2B0 2B1",
        "3F0 3B0 3F1 3B1",
    ]


def test_naive_is_one_microbatch():
    s = build_schedule("naive", 3, 8)
    assert grid(s) == ["0F0 0B0", "1F0 1B0", "2F0 2B0"]
    assert s.M == 1


def test_registry():
    assert {"naive", "gpipe", "1f1b"} <= set(schedule_names())
    assert get_spec("gpipe").formula == "(P-1)/(M+P-1)"
    with pytest.raises(ScheduleError, match="did you mean 'gpipe'"):
        build_schedule("gpipee", 2, 2)
    with pytest.raises(ScheduleError, match="M must be a positive integer"):
        build_schedule("1f1b", 2, 0)


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.sampled_from(["naive", "gpipe", "1f1b"]), st.integers(1, 12), st.integers(1, 24))
def test_every_generated_schedule_is_valid(name, P, M):
    s = build_schedule(name, P, M)
    assert validate(s) is s
    assert s.P == P and s.S == P
