"""Order-safe lowering: between two ranks, receives are posted in send order."""

import pytest
from hypothesis import given, strategies as st, settings

from conveyor.errors import ValidationError
from conveyor.schedule import add_comms, validate
from conveyor.schedule.ir import schedule_from_rows
from conveyor.schedule.lowering import channel_of


def rows(*lines):
    return [line.split() for line in lines]


def test_lowering_posts_receives_in_send_order():
    # Rank 1 consumes micro-batch 1 before micro-batch 0: both receives go first, 0 then 1.
    s = schedule_from_rows("swap", rows("0F0 0F1 0B1 0B0", "1F1 1F0 1B1 1B0"))
    lowered = validate(add_comms(s))
    assert [str(a) for a in lowered.actions[1][:3]] == ["1RECV_F0", "1RECV_F1", "1F1"]
    assert [str(a) for a in lowered.actions[0]] == [
        "0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B1", "0B1", "0RECV_B0", "0B0"]


def test_hand_made_crossing_is_caught_with_the_fix():
    bad = schedule_from_rows("crossing", rows(
        "0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
        "1RECV_F1 1F1 1RECV_F0 1F0 1B0 1SEND_B0 1B1 1SEND_B1"))
    with pytest.raises(ValidationError) as info:
        validate(bad)
    err = info.value
    msg = str(err)
    assert "between rank 0 and rank 1" in msg
    assert "rank 0 sends 0SEND_F0 before 0SEND_F1" in msg
    assert "rank 1 posts 1RECV_F1 before 1RECV_F0" in msg
    assert "move 1RECV_F0 before 1RECV_F1" in msg
    assert (err.rank, err.step) == (1, 0)
    assert ">1RECV_F1<" in err.grid and ">0SEND_F0<" in err.grid
    # The same compute order, lowered by add_comms, is order-safe.
    validate(add_comms(bad.compute_only()))


def _channels(schedule):
    out = {}
    for r, _, a in schedule:
        if not a.is_compute:
            out.setdefault(channel_of(a, schedule.placement), ([], []))[
                a.kind.startswith("RECV")].append(a.mb)
    return out


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.integers(2, 5), st.integers(1, 6), st.randoms(use_true_random=False))
def test_any_legal_consumption_order_lowers_order_safe(P, M, rnd):
    # A GPipe-like order where every rank runs its forwards and backwards in a
    # random micro-batch order: still valid, and the lowering must match sends.
    fw = [rnd.sample(range(M), M) for _ in range(P)]
    rows_ = [[f"{s}F{mb}" for mb in fw[s]] + [f"{s}B{mb}" for mb in fw[s]] for s in range(P)]
    s = schedule_from_rows("shuffled", rows_, M=M)
    lowered = validate(add_comms(s))
    for (src, dst), (sends, recvs) in _channels(lowered).items():
        # Pair by stage too: the kinds alternate per direction with one stage per rank.
        assert sends == recvs, (src, dst)


def test_order_safe_lowering_costs_no_time():
    # Receives posted early for order safety never wait longer than the
    # receive the rank needs: the lowered step equals the compute-only one.
    from conveyor.schedule import build_schedule, schedule_names
    from conveyor.sim import CostModel, simulate
    costs = CostModel(forward=1, backward=2, latency=0.3)
    crossed = 0
    for name in schedule_names():
        for P, M in ((2, 3), (4, 8), (3, 7)):
            s = build_schedule(name, P, M)
            lowered = add_comms(s)
            assert simulate(lowered, costs).step_time == pytest.approx(
                simulate(s, costs).step_time), (name, P, M)
            # count receives posted ahead of their consumer's turn
            for row in lowered.actions:
                for a, b in zip(row, row[1:]):
                    crossed += a.kind.startswith("RECV") and b.kind.startswith("RECV")
    assert crossed > 0  # the V and loop schedules do reorder receives
