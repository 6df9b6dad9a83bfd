"""Rows from raw measurements, targets checked as measured, tables rendered."""

from benchmarks.harness.metrics import ideal_step, summarize_case
from benchmarks.harness.report import (
    markdown_emulated, pair_rows, targets_emulated, targets_mlp, text_table,
)
from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate

F_S, B_S = 0.01, 0.02


def perfect_rank_events(schedule, P, M, t0, stretch=1.0):
    """Per-rank probe events of the simulated step, in seconds, stretched."""
    t = simulate(build_schedule(schedule, P, M), CostModel(forward=F_S, backward=B_S))
    per = [[] for _ in range(P)]
    for e in t.events:
        per[e.rank].append((e.action.stage, e.action.kind, e.action.mb, t0 + stretch * e.start,
                            t0 + stretch * e.end))
    return per, t.step_time


def raw_case(schedule, P, M, stretch, act_bytes):
    ranks = [{} for _ in range(P)]
    for fw, s in stretch.items():
        for r in range(P):
            ranks[r][fw] = []
        for rep in range(3):
            t0 = 100.0 * rep
            per, step = perfect_rank_events(schedule, P, M, t0, s)
            for r in range(P):
                # Ends send M activations (or gradients); middle ranks send both.
                sent = M * act_bytes if r in (0, P - 1) else 2 * M * act_bytes
                ranks[r][fw].append({"t0": t0, "t1": t0 + s * step, "events": per[r],
                                     "rss_start": 100 << 20, "rss_peak": (101 << 20) + r,
                                     "bytes": sent, "sends": M})
    return {"schedule": schedule, "P": P, "M": M, "unsupported": {}, "ranks": ranks}


def rows_for(schedule, P, M, stretch):
    costs = CostModel(forward=F_S, backward=B_S)
    return summarize_case(raw_case(schedule, P, M, stretch, 1000), workload="emulated",
                          costs=costs, activation_bytes=1000)


def test_rows_carry_step_ratio_bubble_memory_and_bytes():
    rows = rows_for("1f1b", 4, 8, {"conveyor": 1.0, "torch": 1.1})
    conv = next(r for r in rows if r["framework"] == "conveyor")
    torch_row = next(r for r in rows if r["framework"] == "torch")
    ideal = ideal_step("1f1b", 4, 8, CostModel(forward=F_S, backward=B_S))["ideal_s"]
    assert abs(ideal - 11 * (F_S + B_S)) < 1e-12
    assert abs(conv["step_s"] - ideal) < 1e-9 and abs(conv["ratio"] - 1) < 1e-9
    assert abs(torch_row["ratio"] - 1.1) < 1e-9
    assert abs(conv["bubble"] - 3 / 11) < 1e-9  # the formula, for equal stages
    assert conv["peak_activations"] == [4, 3, 2, 1]
    assert conv["bytes"] == conv["bytes_expected"] == 2 * 8 * 1000 * 3
    assert conv["rss_step_mib"][0] == 1.0


def test_targets_report_misses_with_their_margins():
    rows = rows_for("1f1b", 2, 4, {"conveyor": 1.08, "torch": 1.04})
    rows += rows_for("gpipe", 2, 4, {"conveyor": 1.0, "torch": 1.1})
    t = targets_emulated(rows)
    ratio = {label: (round(v, 3), ok) for label, v, ok in t["ratio"]}
    assert ratio == {"gpipe P=2 M=4": (1.0, True), "1f1b P=2 M=4": (1.08, False)}
    vs = {label: ok for label, _, ok in t["vs_torch"]}
    assert vs == {"gpipe P=2 M=4": True, "1f1b P=2 M=4": False}
    assert all(ok for *_, ok, _ in t["memory"])
    held = {label: h for label, h, _, _ in t["memory"]}
    assert held["gpipe P=2 M=4 conveyor"] == 4 and held["1f1b P=2 M=4 torch"] == 2


def test_unsupported_cases_are_rows_and_show_as_such():
    raw = raw_case("1f1b", 4, 2, {"conveyor": 1.0}, 10)
    raw["unsupported"] = {"torch": "torch's Schedule1F1B needs M >= P (M=2, P=4)"}
    rows = summarize_case(raw, workload="emulated", costs=CostModel(forward=F_S, backward=B_S),
                          activation_bytes=10)
    assert {r["framework"] for r in rows} == {"conveyor", "torch"}
    assert len(pair_rows(rows)) == 1
    table = "\n".join(markdown_emulated(rows))
    assert "| 1f1b | 4 | 2 |" in table and "n/s" in table
    assert "1f1b" in text_table(rows)


def test_mlp_speedup_target():
    rows = [{"schedule": "1f1b", "P": 2, "M": 16, "framework": "conveyor", "step_s": 1.0,
             "speedup": 1.7, "speedup_ideal": 32 / 17},
            {"schedule": "1f1b", "P": 2, "M": 16, "framework": "torch", "step_s": 1.0,
             "speedup": 1.6, "speedup_ideal": 32 / 17}]
    assert [(label, ok) for label, _, _, ok in targets_mlp(rows)] == [
        ("1f1b P=2 M=16 conveyor", True), ("1f1b P=2 M=16 torch", False)]


def test_breakdown_splits_the_time_beyond_the_ideal():
    from benchmarks.harness.report import markdown_breakdown

    # Stretched 10%: every action is slower, so it is all overrun, no residual.
    rows = rows_for("1f1b", 4, 8, {"conveyor": 1.1, "torch": 1.0})
    conv = next(r for r in rows if r["framework"] == "conveyor")
    assert abs(conv["sim_costs_s"] - 1.1 * conv["ideal_s"]) < 1e-9
    assert abs(conv["sim_measured_s"] - conv["sim_costs_s"]) < 1e-12  # no latency measured
    lines = markdown_breakdown(rows)
    assert lines[2].startswith("| 1f1b | 4 | 8 | 330.0 | 33.0 + 0.0 + 0.0 = 33.0 "
                               "| 0.0 + 0.0 + 0.0 = 0.0 |")
