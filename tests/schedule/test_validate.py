import pytest
from hypothesis import given, strategies as st, settings

from conveyor.errors import ValidationError
from conveyor.schedule import add_comms, build_schedule, validate
from conveyor.schedule.ir import Schedule, schedule_from_rows


def rows(*lines):
    return [line.split() for line in lines]


def check_fails(schedule, pattern, rank=None, step=None):
    with pytest.raises(ValidationError, match=pattern) as info:
        validate(schedule)
    err = info.value
    if rank is not None:
        assert (err.rank, err.step) == (rank, step)
        # the grid marks the failing cell
        marked = [line for line in err.grid.splitlines() if f">{err.action}<" in line]
        assert marked and marked[0].lstrip().startswith(f"rank {rank}")
        assert "^" in err.grid
    return err


def test_missing_backward():
    s = schedule_from_rows("broken", rows("0F0 0F1 0B0 0B1", "1F0 1B0 1F1"))
    err = check_fails(s, "missing backward for stage 1 micro-batch 1", rank=1, step=2)
    assert "1B1" in str(err)


def test_missing_forward():
    s = schedule_from_rows("broken", rows("0F0 0B0 0B1", "1F0 1B0 1F1 1B1"), M=2)
    check_fails(s, r"missing forward 0F1")


def test_backward_before_its_forward():
    s = schedule_from_rows("broken", rows("0F0 0B0", "1B0 1F0"))
    err = check_fails(s, r"backward 1B0 comes before the forward 1F0", rank=1, step=0)
    assert "move 1F0 earlier" in str(err)


def test_w_before_i():
    s = schedule_from_rows("broken", rows("0F0 0W0 0I0", "1F0 1B0"))
    check_fails(s, r"0W0 comes before the input-gradient backward 0I0", rank=0, step=1)


def test_mismatched_send_and_receive():
    # rank 0 sends micro-batch 1's activation but rank 1 never receives it.
    s = schedule_from_rows("broken", rows(
        "0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
        "1RECV_F0 1F0 1B0 1SEND_B0 1F1 1B1 1SEND_B1"))
    err = check_fails(s, r"mismatched send/receive: 0SEND_F1 on rank 0 has no matching "
                         r"1RECV_F1 on rank 1", rank=0, step=3)
    assert err.action.kind == "SEND_F"


def test_deadlocking_order():
    # Each rank waits for the other's backward before running its own forward.
    s = schedule_from_rows("broken", rows("0F0 0B0 0F1 0B1", "1F1 1B1 1F0 1B0"))
    err = check_fails(s, r"deadlock: no rank can move on")
    assert "rank 0 waits at step 1 (0B0) for 1B0" in str(err)
    assert "rank 1 waits at step 0 (1F1) for 0F1" in str(err)


def test_deadlock_with_explicit_comms():
    # Both ranks receive before they send: the classic exchange deadlock.
    s = schedule_from_rows("broken", rows(
        "0F0 0SEND_F0 0RECV_B0 0B0",
        "1RECV_F0 1F0 1B0 1SEND_B0"))
    validate(s)  # fine as written
    bad = schedule_from_rows("broken", rows(
        "0RECV_B0 0F0 0SEND_F0 0B0",
        "1RECV_F0 1F0 1B0 1SEND_B0"))
    check_fails(bad, "deadlock")


def test_action_on_wrong_rank():
    s = schedule_from_rows("broken", rows("0F0 0B0", "1F0 1B0"), placement=[0, 1])
    s = s.replace(actions=(s.actions[0] + (s.actions[1][0],), s.actions[1][1:]))
    check_fails(s, "stage 1 lives on rank 1", rank=0, step=2)


def test_duplicate_action():
    s = schedule_from_rows("broken", rows("0F0 0F0 0B0"))
    check_fails(s, "0F0 appears twice", rank=0, step=1)


def test_out_of_range_microbatch():
    s = Schedule("broken", 1, 1, (schedule_from_rows("x", rows("0F0 0F1 0B0 0B1")).actions[0],))
    check_fails(s, "names micro-batch 1, but M=1", rank=0, step=1)


def test_mixing_b_with_split_backward():
    s = schedule_from_rows("broken", rows("0F0 0B0 0I0 0W0"))
    check_fails(s, "use B, or I and W, not both")


def test_needless_comm_on_same_rank():
    s = schedule_from_rows("broken", rows("0F0 0SEND_F0 1RECV_F0 1F0 1B0 0B0"), placement=[0, 0])
    check_fails(s, "same rank 0", rank=0, step=1)


def test_grid_is_windowed_for_wide_schedules():
    s = build_schedule("gpipe", 2, 200)
    row = list(s.actions[0])
    row.insert(100, row.pop(350))  # 0B150 before 0F150
    with pytest.raises(ValidationError, match="0B150 comes before the forward 0F150") as info:
        validate(s.replace(actions=(tuple(row), s.actions[1])))
    first_line = info.value.grid.splitlines()[0]
    assert "of steps 0..399" in first_line
    assert len(first_line) < 400  # 400 steps unwindowed would be 3600 wide
    assert ">0B150<" in info.value.grid and ">0F150<" in info.value.grid


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.sampled_from(["naive", "gpipe", "1f1b"]), st.integers(1, 8), st.integers(1, 16))
def test_lowered_schedules_are_valid_and_paired(name, P, M):
    lowered = add_comms(build_schedule(name, P, M))
    validate(lowered)
    sends = sum(a.kind.startswith("SEND") for _, _, a in lowered)
    recvs = sum(a.kind.startswith("RECV") for _, _, a in lowered)
    m = lowered.M
    assert sends == recvs == 2 * m * (P - 1)
    assert add_comms(lowered) == lowered


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.integers(2, 6), st.integers(1, 8), st.data())
def test_dropping_any_backward_is_caught(P, M, data):
    s = build_schedule("1f1b", P, M)
    r = data.draw(st.integers(0, P - 1))
    backs = [i for i, a in enumerate(s.actions[r]) if a.kind == "B"]
    i = data.draw(st.sampled_from(backs))
    dropped = s.actions[r][i]
    rows_ = list(s.actions)
    rows_[r] = rows_[r][:i] + rows_[r][i + 1:]
    with pytest.raises(ValidationError, match=f"missing backward for stage {dropped.stage} "
                                              f"micro-batch {dropped.mb}"):
        validate(s.replace(actions=tuple(rows_)))


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.integers(2, 6), st.integers(2, 8), st.data())
def test_swapping_a_rank_into_reverse_order_is_caught(P, M, data):
    s = build_schedule("gpipe", P, M)
    r = data.draw(st.integers(0, P - 1))
    rows_ = list(s.actions)
    rows_[r] = tuple(reversed(rows_[r]))
    with pytest.raises(ValidationError):
        validate(s.replace(actions=tuple(rows_)))
