"""The decode schedule: a forward-only chain of virtual stages with a loop
cut from the last stage to the first; validated, lowered and simulated as
any schedule. No torch."""

from __future__ import annotations

import math

import pytest

from conveyor.errors import CostModelError, ScheduleError, ValidationError
from conveyor.schedule import RECV_F, SEND_F, Action, add_comms, validate
from conveyor.schedule.decode import decode_schedule, round_of
from conveyor.sim.decode import decode_rows, decode_summary, idle_at_one_lane, simulate_decode


def test_the_schedule_is_every_round_of_every_lane_in_order():
    s = decode_schedule(2, 2, new_tokens=2)  # 1 prefill round + 1 token round
    assert s.S == 4 and s.placement == (0, 1, 0, 1) and s.forward_only
    assert s.text_rows() == [["0F0", "0F1", "2F0", "2F1"], ["1F0", "1F1", "3F0", "3F1"]]
    assert s.meta["decode"] == {"P": 2, "M": 2, "S": 2, "chunks": 1, "new_tokens": 2,
                                "placement": [0, 1]}
    assert round_of(3, 2) == (1, 1)


def test_lowering_adds_the_loop_from_the_last_stage_to_the_first():
    s = validate(add_comms(decode_schedule(2, 1, new_tokens=2, chunks=2)))
    # Round k's stage 1 (rank 1) sends back to round k+1's stage 0 (rank 0).
    assert s.text_rows() == [
        ["0F0", "0SEND_F0", "2RECV_F0", "2F0", "2SEND_F0", "4RECV_F0", "4F0", "4SEND_F0"],
        ["1RECV_F0", "1F0", "1SEND_F0", "3RECV_F0", "3F0", "3SEND_F0", "5RECV_F0", "5F0"]]
    assert Action(3, SEND_F, 0) in s.actions[1] and Action(4, RECV_F, 0) in s.actions[0]


def test_several_stages_per_rank_keep_their_placement_every_round():
    s = validate(add_comms(decode_schedule(2, 3, new_tokens=3, placement=(0, 1, 1, 0))))
    assert s.placement == (0, 1, 1, 0) * 3
    # The V placement's loop stays on rank 0: no transfer between rounds there.
    assert Action(3, SEND_F, 0) not in s.actions[0]


@pytest.mark.parametrize("kw, text", [
    (dict(P=0, M=1, new_tokens=1), "P must be a positive integer"),
    (dict(P=2, M=1, new_tokens=0), "new_tokens must be a positive integer"),
    (dict(P=2, M=1, new_tokens=1, chunks=0), "chunks must be a positive integer"),
    (dict(P=4, M=1, new_tokens=2000), "beyond conveyor's bound of 4096; generate at most 1024"),
    (dict(P=2, M=1, new_tokens=2, placement=(0, 0)), "each rank holding at least one"),
])
def test_bad_counts_are_refused_by_name(kw, text):
    P, M = kw.pop("P"), kw.pop("M")
    with pytest.raises(ScheduleError, match=text):
        decode_schedule(P, M, **kw)


def test_a_misordered_decode_is_a_validation_error():
    s = decode_schedule(2, 1, new_tokens=2)
    bad = s.replace(actions=(tuple(reversed(s.actions[0])), s.actions[1]))
    with pytest.raises(ValidationError, match="deadlock|comes before"):
        validate(add_comms(bad))


# -- simulated --------------------------------------------------------------------------

@pytest.mark.parametrize("P", [1, 2, 4, 8])
def test_one_lane_leaves_each_rank_idle_P_minus_1_over_P(P):
    s = decode_summary(simulate_decode(P, 1, new_tokens=16))
    assert all(math.isclose(x, float(idle_at_one_lane(P)), abs_tol=1e-12) for x in s["idle"])
    assert math.isclose(s["tokens_per_time"], 1 / P)  # one process's rate (P stages of 1)


@pytest.mark.parametrize("P", [2, 4])
def test_idle_falls_as_lanes_fill_and_vanishes_but_for_fill_and_drain(P):
    K = 16  # rounds: 1 prefill + 15 token steps
    idle = []
    for M in range(1, 2 * P + 1):
        s = decode_summary(simulate_decode(P, M, new_tokens=K))
        # Unit stage time, free links: a round takes max(M, P) slots.
        want = 1 - M * K / (K * max(M, P) + min(M, P) - 1)
        assert math.isclose(s["idle_overall"], want, abs_tol=1e-12), M
        idle.append(s["idle_overall"])
    assert all(a > b for a, b in zip(idle, idle[1:P]))  # falls while lanes fill
    assert idle[P - 1] == pytest.approx((P - 1) / (K * P + P - 1))  # M = P: fill and drain


def test_tokens_per_time_against_one_process():
    rows = decode_rows(4, [1, 2, 4, 8], new_tokens=32)
    speed = [r["speedup"] for r in rows]
    assert speed[0] == pytest.approx(1.0)
    assert speed[1] == pytest.approx(2.0, rel=0.02)
    assert 3.8 < speed[2] < 4.0 and 3.9 < speed[3] < 4.0  # P x, less the fill and drain


def test_the_loops_link_time_takes_more_lanes_to_hide():
    # A transfer of half a stage time per cut: a lane's round takes P + P/2
    # slots, so P lanes no longer fill it; 6 do.
    at = {M: decode_summary(simulate_decode(4, M, new_tokens=32, latency=0.5))
          for M in (4, 6)}
    assert at[4]["idle_overall"] > 0.3
    assert at[6]["idle_overall"] < 0.05


def test_prefill_rounds_cost_their_tokens():
    tl = simulate_decode(2, 1, new_tokens=3, chunks=2, chunk_tokens=4)
    # 2 prefill rounds of 4 tokens (4 slots per stage), then 2 token rounds.
    assert tl.step_time == 2 * (2 * 4 + 2 * 1)


def test_bad_costs_are_refused():
    with pytest.raises(CostModelError, match="step=-1"):
        simulate_decode(2, 1, new_tokens=2, step=-1)
    with pytest.raises(CostModelError, match="3 step times for 2 stages"):
        simulate_decode(2, 1, new_tokens=2, step=[1, 1, 1])
