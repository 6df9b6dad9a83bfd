"""Data parallelism in the simulator: the ring all-reduce's cost, links by
node, when each all-reduce starts, and dp = 1 left exactly as it was."""

import contextlib
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from conveyor.cli.main import main
from conveyor.errors import CostModelError
from conveyor.schedule import build_schedule
from conveyor.schedule.ir import B, W
from conveyor.sim import CostModel, Timeline, simulate
from conveyor.sim.dp import (
    crosses_nodes, group_spans_nodes, ring_allreduce_time, schedule_allreduces,
)

DATA = Path(__file__).parent / "data"


def test_ring_allreduce_time_by_hand():
    # 2(dp-1)/dp of the bytes at the bandwidth, plus 2(dp-1) latencies.
    assert ring_allreduce_time(800, 4, 0.5, 100) == 2 * 3 / 4 * 8 + 6 * 0.5 == 15.0
    assert ring_allreduce_time(1000, 2, 0.0, 10) == 100.0
    assert ring_allreduce_time(1000, 1, 7.0, 10) == 0.0       # one replica: nothing to reduce
    assert ring_allreduce_time(1000, 8, 1.0, math.inf) == 14.0  # free bandwidth: latencies only
    assert ring_allreduce_time(0, 8, 0.0, 10) == 0.0


def test_ranks_fill_nodes_in_global_rank_order():
    # P = 4, dp = 2, 3 ranks per node: replica 0 is ranks 0..3 (nodes 0,0,0,1),
    # replica 1 is 4..7 (nodes 1,1,2,2).
    assert not crosses_nodes(0, 1, 4, 2, 3)      # same node in both replicas
    assert crosses_nodes(1, 2, 4, 2, 3)          # replica 1: ranks 5 and 6 on nodes 1, 2
    assert crosses_nodes(2, 3, 4, 2, 3)          # replica 0: ranks 2 and 3 on nodes 0, 1
    assert not crosses_nodes(1, 2, 4, 1, 3)      # one replica: ranks 1, 2 share node 0
    assert not crosses_nodes(0, 3, 4, 2, None)   # one node
    # Data-parallel groups {r, 4 + r}: 8 ranks per node hold them, 4 do not.
    assert not any(group_spans_nodes(r, 4, 2, 8) for r in range(4))
    assert all(group_spans_nodes(r, 4, 2, 4) for r in range(4))
    assert not group_spans_nodes(0, 4, 1, 1)     # dp = 1: no group to span


def test_cut_across_nodes_pays_the_inter_node_link():
    # 1F1B, P = 4, M = 1, F = 1, B = 2; 2 ranks per node, so only the cut
    # between ranks 1 and 2 crosses nodes and costs inter_latency = 5 each way:
    # forwards 0-1, 1-2, 7-8, 8-9; backwards 9-11, 11-13, 18-20, 20-22.
    costs = CostModel(forward=1, backward=2, latency=0.0, inter_latency=5.0, ranks_per_node=2)
    tl = simulate(build_schedule("1f1b", 4, 1), costs)
    ends = {str(e.action): e.end for e in tl.events}
    assert ends == {"0F0": 1, "1F0": 2, "2F0": 8, "3F0": 9, "3B0": 11, "2B0": 13, "1B0": 20,
                    "0B0": 22}
    assert tl.step_time == 22.0
    same_node = simulate(build_schedule("1f1b", 4, 1), costs.__class__(
        forward=1, backward=2, inter_latency=5.0, ranks_per_node=4))
    assert same_node.step_time == 12.0


def test_allreduce_intra_vs_inter_node_by_hand():
    # 1F1B, P = 2, M = 2, F = 1, B = 2: stage 1's last B ends at 7, stage 0's
    # at 9. dp = 2, 100 parameter bytes per stage: the ring moves 100 bytes.
    sched = build_schedule("1f1b", 2, 2)
    base = dict(forward=1, backward=2, dp=2, param_bytes=100, bandwidth=100.0,
                inter_bandwidth=10.0)
    intra = simulate(sched, CostModel(**base, ranks_per_node=4))   # world 4 on one node
    inter = simulate(sched, CostModel(**base, ranks_per_node=2))   # replica per node
    assert [(c.rank, c.stage, c.start, c.end) for c in intra.collectives] == [
        (0, 0, 9.0, 10.0), (1, 1, 7.0, 8.0)]
    assert [(c.rank, c.stage, c.start, c.end) for c in inter.collectives] == [
        (0, 0, 9.0, 19.0), (1, 1, 7.0, 17.0)]
    assert (intra.step_time, inter.step_time) == (10.0, 19.0)
    assert inter.pipeline_end == 9.0
    assert inter.meta["allreduce"]["inter_node"] == [True, True]


def test_allreduces_on_one_rank_run_one_at_a_time():
    # Rank 0 holds stages 0 and 2 (a V): its list, and when each action ends.
    rows = [[(0, "F", 0), (2, "F", 0), (2, B, 0), (0, B, 0)], [(1, "F", 0), (1, B, 0)]]
    end = {rows[0][0]: 1.0, rows[0][1]: 2.0, rows[0][2]: 4.0, rows[0][3]: 6.0,
           rows[1][0]: 1.5, rows[1][1]: 5.0}
    times = [3.0, 1.0, 3.0]
    over = schedule_allreduces(rows, end.__getitem__, (0, 1, 0), times, overlap=True)
    # Stage 2 is ready at 4 (runs 4-7); stage 0 at 6 waits for it (7-10).
    assert [(c.rank, c.stage, c.ready, c.start, c.end) for c in over] == [
        (0, 2, 4.0, 4.0, 7.0), (0, 0, 6.0, 7.0, 10.0), (1, 1, 5.0, 5.0, 6.0)]
    after = schedule_allreduces(rows, end.__getitem__, (0, 1, 0), times, overlap=False)
    # After the step both of rank 0's wait for its last action (6): 6-9, 9-12.
    assert [(c.stage, c.start, c.end) for c in after] == [(0, 6.0, 9.0), (2, 9.0, 12.0),
                                                          (1, 5.0, 6.0)]


@pytest.mark.parametrize("name", ["1f1b", "interleaved-1f1b", "zb-h1", "zbv", "gpipe"])
@pytest.mark.parametrize("overlap", [True, False])
def test_allreduce_starts_after_the_last_backward_and_ends_the_step(name, overlap):
    P, M = 4, 8
    sched = build_schedule(name, P, M)
    costs = CostModel(forward=1.0, backward=2.5, dp=4, ranks_per_node=8, param_bytes=30.0,
                      bandwidth=20.0, inter_bandwidth=5.0, allreduce_overlap=overlap)
    tl = simulate(sched, costs)
    assert sorted(c.stage for c in tl.collectives) == list(range(sched.S))
    for c in tl.collectives:
        mine = tl.rank_events(c.rank)
        last_back = max(e.end for e in mine if e.action.stage == c.stage
                        and e.action.kind in (B, "I", W))
        ready = last_back if overlap else max(e.end for e in mine)
        assert c.ready == ready and c.start >= ready
        assert c.end - c.start == pytest.approx(2 * 3 / 4 * 30.0 / 5.0)  # group spans nodes
    per_rank: dict[int, list] = {}
    for c in tl.collectives:
        per_rank.setdefault(c.rank, []).append(c)
    for cs in per_rank.values():  # one at a time on each rank
        cs.sort(key=lambda c: c.start)
        assert all(a.end <= b.start for a, b in zip(cs, cs[1:]))
    assert tl.step_time == max(c.end for c in tl.collectives) - tl.t0
    info = tl.meta["allreduce"]
    assert info["end_overlapped"] <= info["end_after_step"]


def test_overlap_hides_the_all_reduce_of_early_stages():
    # interleaved-1f1b P=4 M=4: rank 3's stage 3 ends its backward long before
    # its stage 7 does, so the overlapped all-reduce ends sooner.
    sched = build_schedule("interleaved-1f1b", 4, 4)
    costs = dict(dp=4, ranks_per_node=8, param_bytes=400.0, bandwidth=100.0,
                 inter_bandwidth=40.0)
    on = simulate(sched, CostModel(**costs))
    off = simulate(sched, CostModel(**costs, allreduce_overlap=False))
    assert on.step_time < off.step_time
    assert on.meta["allreduce"]["end_after_step"] == off.step_time
    assert off.meta["allreduce"]["end_overlapped"] == on.step_time


def test_dp1_output_is_unchanged_bit_for_bit():
    # Written by `conveyor simulate --json` before DP existed (commit 584be4e).
    for case in json.loads((DATA / "dp1_before.json").read_text()):
        for extra in ([], ["--dp", "1", "--nodes", "1"]):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["simulate", *case["argv"], *extra, "--json"]) == 0
            assert json.loads(buf.getvalue()) == case["output"], case["argv"]


def test_timeline_file_keeps_the_all_reduces(tmp_path):
    tl = simulate(build_schedule("1f1b", 2, 2),
                  CostModel(dp=2, param_bytes=10.0, bandwidth=5.0))
    back = Timeline.from_dict(json.loads(json.dumps(tl.to_dict())))
    assert back.collectives == tl.collectives and back.step_time == tl.step_time
    shifted = tl.shifted(100.0)
    assert shifted.step_time == tl.step_time
    assert shifted.collectives[0].start == tl.collectives[0].start + 100.0
    assert "collectives" not in simulate(build_schedule("1f1b", 2, 2)).to_dict()


@pytest.mark.parametrize("kw,needle", [
    (dict(dp=0), "dp must be a positive integer"),
    (dict(ranks_per_node=0), "ranks_per_node must be a positive integer"),
    (dict(inter_bandwidth=0), "inter_bandwidth=0"),
    (dict(inter_latency=-1), "inter_latency=-1"),
    (dict(param_bytes=[1, -2]), "param_bytes=-2"),
])
def test_bad_dp_costs_are_named(kw, needle):
    with pytest.raises(CostModelError, match=needle):
        CostModel(**kw)


def test_param_bytes_per_stage_must_match_the_stages():
    with pytest.raises(CostModelError, match="param_bytes has 3 values but the schedule has 8"):
        simulate(build_schedule("interleaved-1f1b", 4, 4), CostModel(dp=2, param_bytes=[1, 2, 3]))


def test_cost_dict_round_trips_with_dp_fields():
    c = CostModel(dp=8, ranks_per_node=16, inter_latency=0.5, inter_bandwidth=math.inf,
                  param_bytes=[1.0, 2.0], allreduce_overlap=False)
    assert CostModel.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_the_planner_times_the_all_reduce():
    # A planner search with dp=4 over two nodes: every simulated step is the
    # one simulate() gives with each stage's profiled parameter bytes
    # all-reduced, and none is shorter than without DP.
    from conveyor.plan import search
    from conveyor.partition import stage_ranges
    from tests.plan._profiles import UNEQUAL, synthetic

    prof = synthetic(UNEQUAL, params=2_000_000)
    cluster = dict(dp=4, ranks_per_node=4, inter_bandwidth=1e9, inter_latency=1e-5)
    plain = search(prof, P=2, batch_size=16, schedules=["1f1b"], microbatches=[4], refine=False)
    dp = search(prof, P=2, batch_size=16, schedules=["1f1b"], microbatches=[4], refine=False,
                cluster=cluster)
    best = dp.best
    params = [2_000_000 * len(r) for r in stage_ranges(best.balance)]
    costs = replace(best._costs.cost_model(prof.latency, prof.bandwidth), **cluster,
                    param_bytes=params)
    again = simulate(best.schedule, costs, check=False, unit="s")
    assert best.step == again.step_time
    assert again.collectives and best.step > plain.best.step
