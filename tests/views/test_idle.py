"""A measured rank's idle time split into waiting on a peer (the bubble) and
transfer in flight (conveyor.views.idle), and several steps' spread per rank
(conveyor.views.steps)."""

from pathlib import Path

import pytest

from conveyor.errors import TimelineError
from conveyor.schedule import Action, build_schedule
from conveyor.sim import CostModel, Timeline, load_timeline, simulate
from conveyor.sim.timeline import Event
from conveyor.views.idle import TRANSFER, WAIT, idle_totals, split_idle
from conveyor.views.measured import measured_section
from conveyor.views.steps import steps_section

from tests.views.helpers import measured_like, slowed_steps

SWEEP = Path(__file__).parent / "data" / "sweep"


def _two_ranks(send_start: float) -> Timeline:
    # rank 0 computes 0F0 on [0, 1] and sends it on [send_start, +0.1];
    # rank 1 waits in 1RECV_F0 on [0, 1.5], then computes 1F0 on [1.5, 2.5].
    ev = [Event(0, Action.parse("0F0"), 0.0, 1.0),
          Event(0, Action.parse("0SEND_F0"), send_start, send_start + 0.1),
          Event(1, Action.parse("1RECV_F0"), 0.0, 1.5),
          Event(1, Action.parse("1F0"), 1.5, 2.5)]
    return Timeline(P=2, M=1, S=2, schedule="gpipe", events=ev, source="measured", unit="s",
                    forward_only=True)


def test_a_receive_is_waiting_until_the_peer_sends_then_transfer():
    tl = _two_ranks(1.0)
    pieces = [(p.rank, p.start, p.end, p.kind) for p in split_idle(tl)]
    assert pieces == [(0, 1.0, 1.1, TRANSFER), (0, 1.1, 2.5, WAIT),
                      (1, 0.0, 1.0, WAIT), (1, 1.0, 1.5, TRANSFER)]
    rank1 = [p for p in split_idle(tl) if p.rank == 1]
    assert all(str(p.message.recv.action) == "1RECV_F0" and p.message.sender == 0 for p in rank1)
    assert str(rank1[0].message.send.action) == "0SEND_F0"
    t = idle_totals(tl)
    assert t["wait"] == pytest.approx((1.4 + 1.0) / 5) and t["transfer"] == pytest.approx(0.6 / 5)
    assert t["idle"] == pytest.approx(tl.bubble_overall)


def test_a_send_that_seems_later_than_its_receive_counts_as_waiting():
    # clocks of two processes are close, not equal: the receive ended "before"
    # the send began, so none of it can be called a transfer
    tl = _two_ranks(1.6)
    assert [(p.start, p.end, p.kind) for p in split_idle(tl) if p.rank == 1] == [(0.0, 1.5, WAIT)]


@pytest.mark.parametrize("M", [1, 2, 4, 8, 16])
def test_real_runs_split_exactly_into_their_idle_time(M):
    tl = load_timeline(SWEEP / f"M{M:02d}.json")
    pieces = split_idle(tl)
    for r in range(tl.P):
        mine = [p for p in pieces if p.rank == r]
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))   # no overlap, in order
        covered = sum(p.end - p.start for p in mine)
        assert covered == pytest.approx(tl.step_time - tl.busy(r), abs=1e-12)
    t = idle_totals(tl, pieces)
    assert t["idle"] == pytest.approx(tl.bubble_overall, abs=1e-12)
    assert t["transfer"] > 0 and t["wait"] > t["transfer"]


def test_a_simulated_timeline_is_all_waiting():
    tl = simulate(build_schedule("1f1b", 4, 8), CostModel(forward=1, backward=2))
    assert {p.kind for p in split_idle(tl)} == {WAIT}
    assert idle_totals(tl)["wait"] == pytest.approx(tl.bubble_overall)


def test_measured_section_embeds_the_pieces_and_messages():
    tl = load_timeline(SWEEP / "M04.json")
    m = measured_section(tl, source="M04.json")["measured"]
    assert m["wait"] + m["transfer"] == pytest.approx(m["idle"]) and m["idle"] == pytest.approx(
        tl.bubble_overall)
    recv = [msg for msg in m["messages"] if msg[0] == "1RECV_F0"]
    assert len(recv) == 1 and recv[0][2:4] == ["0SEND_F0", 0]
    total = sum(b - a for _, a, b, _, _ in m["pieces"])
    assert total == pytest.approx(tl.bubble_overall * tl.P * tl.step_time)


def test_steps_name_the_straggler_and_the_spread():
    tls = slowed_steps("1f1b", 4, 8, steps=5, slow_rank=1, factor=1.5)
    sp = steps_section(tls, [f"s{k}.json" for k in range(5)])
    assert sp["straggler"]["rank"] == 1 and sp["straggler"]["ratio"] == pytest.approx(1.5, rel=0.1)
    busy = [[tl.busy(r) for tl in tls] for r in range(4)]
    assert sp["busy"][1] == [sorted(busy[1])[2], max(busy[1])]          # median, worst
    steps = [tl.step_time for tl in tls]
    assert steps[sp["median_step"]] == sorted(steps)[2]
    assert len(sp["runs"]) == 5 and sp["files"][0] == "s0.json"


def test_recorded_steps_name_the_slow_stage():
    # tests/views/data/steps: five steps of a real run (record_steps.py) whose
    # stage 2 is an emulated device 1.5 times as slow as the others. Emulated
    # times are sleeps, which a loaded machine stretches, so the ratio is only
    # near 1.5; which rank is slowest is not in doubt.
    steps = Path(__file__).parent / "data" / "steps"
    files = sorted(steps.glob("step*.json"))
    sp = steps_section([load_timeline(f) for f in files], files)
    assert len(files) == 5 and sp["straggler"]["rank"] == 2
    assert 1.2 < sp["straggler"]["ratio"] < 1.8
    waits = [w[0] for w in sp["wait"]]
    assert waits.index(min(waits)) == 2          # the straggler waits least: the others wait on it


def test_steps_of_different_runs_are_refused():
    with pytest.raises(TimelineError, match="pass steps of one run"):
        steps_section([measured_like("gpipe", 4, 8), measured_like("1f1b", 4, 8)], ["a", "b"])
    with pytest.raises(TimelineError, match="at least two timelines"):
        steps_section([measured_like("gpipe", 4, 8)], ["a"])
