import json

import pytest

from conveyor.schedule import add_comms, build_schedule
from conveyor.sim import CostModel, load_timeline, simulate
from conveyor.views.trace import chrome_trace, save_trace

from tests.views.helpers import measured_like


def _check(trace: dict, tl) -> None:
    events = trace["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads == {r: f"rank {r}" for r in range(tl.P)}        # one track per rank
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(tl.events)                           # one slice per event
    assert sorted((e["tid"], e["name"]) for e in slices) == sorted(
        (e.rank, str(e.action)) for e in tl.events)                # named by the text form
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in slices)


def test_simulated_trace(tmp_path):
    tl = simulate(build_schedule("1f1b", 4, 6), CostModel(forward=1, backward=2))
    path = save_trace(tl, tmp_path / "t.json")
    trace = json.loads(path.read_text())                          # valid JSON on disk
    _check(trace, tl)
    first = min((e for e in trace["traceEvents"] if e["ph"] == "X"), key=lambda e: e["ts"])
    assert first["name"] == "0F0" and first["dur"] == 1000.0     # a slot shows as 1 ms
    assert trace["otherData"]["bubble"] == pytest.approx(tl.bubble_overall)


def test_measured_trace_in_microseconds(tmp_path):
    tl = measured_like("gpipe", 3, 4)
    tl.save(tmp_path / "run.json")
    back = load_timeline(tmp_path / "run.json")
    trace = chrome_trace(back)
    _check(trace, back)
    e = next(e for e in back.events if str(e.action) == "2B3")
    x = next(s for s in trace["traceEvents"] if s.get("name") == "2B3")
    assert x["ts"] == pytest.approx((e.start - back.t0) * 1e6)
    assert x["dur"] == pytest.approx(e.duration * 1e6)


def test_comm_actions_are_slices_too():
    tl = simulate(add_comms(build_schedule("gpipe", 2, 2)), CostModel(latency=0.5))
    trace = chrome_trace(tl)
    _check(trace, tl)
    assert {e["cat"] for e in trace["traceEvents"] if e["ph"] == "X"} == {"compute", "comm"}


def test_all_reduces_get_a_track_per_rank():
    # 1F1B P=2 M=2, dp=2, 100 bytes at 10 bytes/slot: each ring takes 10 slots
    # (a slot is 1000 us in a trace); rank 1's runs 7-17, rank 0's 9-19.
    tl = simulate(build_schedule("1f1b", 2, 2),
                  CostModel(forward=1, backward=2, dp=2, param_bytes=100.0, bandwidth=10.0))
    events = chrome_trace(tl)["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads == {0: "rank 0", 1: "rank 1", 2: "rank 0 all-reduce", 3: "rank 1 all-reduce"}
    ar = sorted((e["tid"], e["name"], e["ts"], e["dur"]) for e in events
                if e.get("cat") == "allreduce")
    assert ar == [(2, "all-reduce stage 0", 9000.0, 10000.0),
                  (3, "all-reduce stage 1", 7000.0, 10000.0)]
