"""`conveyor demo`: the README's first command, end to end, with its measured sweep."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.plan import load_profile, stage_costs
from conveyor.plan.search import microbatch_sizes
from conveyor.demo.digits import usable_cores
from conveyor.schedule import build_schedule
from conveyor.sim import load_timeline, simulate

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"M", "measured", "simulated", "formula", "step_s", "timeline"}


def demo(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "conveyor", "demo", "--no-progress", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


def test_demo_trains_to_90_percent_and_measures_the_bubble_shrinking(tmp_path):
    # A reduced sweep keeps the test short: three M far enough apart that a
    # stall of a few hundred ms on a loaded machine cannot reorder them.
    table = tmp_path / "table" / "sweep.json"
    proc, wall = demo("--out", str(tmp_path), "--sweep-m", "1,2,8", "--sweep-device-ms", "150",
                      "--sweep-json", str(table))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert wall < 240
    assert re.search(r"4 processes \((gloo, CPU|nccl, one GPU each)\), schedule 1f1b, M=8", out)
    assert len(re.findall(r"^epoch +\d+/\d+ +loss [0-9.]+$", out, re.M)) == 8
    acc = float(re.search(r"test accuracy: ([0-9.]+)%", out).group(1))
    assert acc >= 90.0
    m = re.search(r"bubble: measured ([0-9.]+)%  \|  simulated ([0-9.]+)% .*formula "
                  r"\(P-1\)/\(M\+P-1\) = 27\.3%", out)
    assert m, out
    timeline = load_timeline(tmp_path / "timeline.json")
    assert f"measured timeline: {tmp_path / 'timeline.json'}" in out
    assert (timeline.source, timeline.P, timeline.M) == ("measured", 4, 8)
    assert abs(100 * timeline.bubble_overall - float(m.group(1))) < 0.06
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["balance"] == [5, 5, 4, 4] and summary["accuracy"] >= 0.9

    # The planner's prediction beside the measurement: the simulator replaying
    # 1F1B with the per-layer costs of the profile the demo wrote, which holds
    # the runtime's overhead per action and latency per transfer fitted on
    # the demo's ranks.
    pred = re.search(r"^step: predicted ([0-9.]+) ms \(simulated, profiled costs, bubble "
                     r"([0-9.]+)%\)  \|  measured ([0-9.]+) ms \(median of (\d+) steps; "
                     r"([0-9.]+)x the prediction\)$", out, re.M)
    assert pred, out
    prof = load_profile(tmp_path / "profile.json")
    assert prof.overhead == summary["runtime_overhead_s"] >= 0
    assert prof.overhead + prof.latency > 0  # the runtime's work is in it
    assert prof.latency == summary["runtime_latency_s"]
    costs = stage_costs(prof, [5, 5, 4, 4], microbatch_sizes(64, 8), [False] * 4)
    sim = simulate(build_schedule("1f1b", 4, 8), costs.cost_model(prof.latency),
                   check=False, unit="s")
    assert summary["predicted_step_s"] == pytest.approx(sim.step_time, rel=1e-9)
    assert float(pred.group(1)) == pytest.approx(1000 * sim.step_time, abs=0.0051)
    assert float(pred.group(2)) == pytest.approx(100 * sim.bubble_overall, abs=0.051)
    assert float(pred.group(3)) / float(pred.group(1)) == pytest.approx(
        float(pred.group(5)), abs=0.0051 + 0.01 * float(pred.group(5)))
    # the compute alone: the same profile without the runtime's share
    bare = stage_costs(dataclasses.replace(prof, overhead=0.0), [5, 5, 4, 4],
                       microbatch_sizes(64, 8), [False] * 4)
    alone = simulate(build_schedule("1f1b", 4, 8), bare.cost_model(), check=False, unit="s")
    assert summary["predicted_compute_step_s"] == pytest.approx(alone.step_time, rel=1e-9)
    assert summary["predicted_compute_step_s"] < summary["predicted_step_s"]
    held = re.search(r"^  the prediction holds the layers' compute \(([0-9.]+) ms alone\) and "
                     r"the runtime's own work measured on these ranks: (\d+) us per action, "
                     r"(\d+) us per transfer$", out, re.M)
    assert held, out
    assert float(held.group(1)) == pytest.approx(1000 * alone.step_time, abs=0.0051)
    assert int(held.group(2)) == round(1e6 * prof.overhead)
    shared = "the prediction cannot model this machine: it assumes a core per rank" in out
    assert shared == (4 > usable_cores())

    # The sweep: the table as JSON, for scripts, and the same file beside the timelines.
    doc = json.loads(table.read_text())
    assert doc == json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert (doc["P"], doc["schedule"], doc["batch"]) == (4, "1f1b", 64)
    assert doc["device_time"]["forward_s_per_batch"] == pytest.approx(0.15)
    assert doc["device_time"]["backward_s_per_sample"] == pytest.approx(0.3 / 64)
    rows = doc["rows"]
    assert [r["M"] for r in rows] == [1, 2, 8]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["formula"] == pytest.approx(3 / (r["M"] + 3), abs=1e-12)
        assert all(0 <= r[k] <= 1 for k in ("measured", "simulated", "formula"))
        assert r["step_s"] > 0 and r["timeline"] == f"M{r['M']:02d}.json"
    measured = [r["measured"] for r in rows]
    assert measured[0] > measured[1] > measured[2], measured  # the seed's claim, measured

    # One ordinary measured timeline per M, whose own bubble is the row's.
    for r in rows:
        t = load_timeline(tmp_path / "sweep" / r["timeline"])
        assert (t.source, t.P, t.M, t.schedule) == ("measured", 4, r["M"], "1f1b")
        assert t.meta["batch"] == 64 and t.meta["microbatch_sizes"] == [64 // r["M"]] * r["M"]
        assert t.bubble_overall == pytest.approx(r["measured"], abs=1e-12)
        assert t.step_time == pytest.approx(r["step_s"], abs=1e-12)

    # What it prints: one row per M as in the JSON, then a line computed from the rows.
    assert re.search(r"emulated device time: a stage sleeps for it without using the CPU, as a "
                     r"GPU kernel does, so 4 ranks on \d+ CPU cores behave like 4 devices", out)
    assert f"sweep timelines: {tmp_path / 'sweep' / 'M01.json'} ... M08.json" in out
    printed = re.findall(r"^ +(\d+) +([0-9.]+)% +([0-9.]+)% +([0-9.]+)% +([0-9.]+) s$", out, re.M)
    assert [int(p[0]) for p in printed] == [1, 2, 8]
    for p, r in zip(printed, rows):
        assert float(p[1]) == pytest.approx(100 * r["measured"], abs=0.051)
        assert float(p[3]) == pytest.approx(100 * r["formula"], abs=0.051)
    line = (f"the measured bubble fell from {100 * measured[0]:.1f}% to {100 * measured[2]:.1f}% "
            f"as M went from 1 to 8 (formula 75.0% to 27.3%); step time fell by "
            f"{rows[0]['step_s'] / rows[2]['step_s']:.1f}x")
    assert line in out, out
    assert f"sweep table: {table}" in out
    assert summary["sweep"]["rows"] == rows

