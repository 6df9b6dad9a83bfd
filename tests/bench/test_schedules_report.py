"""The every-schedule grid: stage placement per framework, targets and headline."""

import pytest

from benchmarks.harness.config import Unsupported
from benchmarks.harness.frameworks import stage_plan
from benchmarks.harness.schedules_report import headline, markdown_schedules, targets_schedules


def test_torch_placements_are_loop_and_v():
    assert stage_plan("torch", "1f1b", 4, 8) == (4, [[0], [1], [2], [3]])
    assert stage_plan("torch", "interleaved-1f1b", 2, 4) == (4, [[0, 2], [1, 3]])
    assert stage_plan("torch", "zbv", 3, 6) == (6, [[0, 5], [1, 4], [2, 3]])
    assert stage_plan("conveyor", "gpipe", 2, 4) == (2, [[0], [1]])
    with pytest.raises(Unsupported, match="no 'naive' schedule"):
        stage_plan("torch", "naive", 2, 4)
    with pytest.raises(Unsupported, match="conveyor: unknown schedule"):
        stage_plan("conveyor", "interleaved-zb", 2, 4)


def row(schedule, fw, step, *, P=4, M=8, ideal=None, held=None, bound=None):
    r = {"schedule": schedule, "framework": fw, "P": P, "M": M, "step_s": step,
         "peak_activations": [held or 1], "rss_step_mib": [1.0]}
    if ideal:
        r.update(ideal_s=ideal, ratio=step / ideal, ideal_peak_activations=[bound])
    if held is not None and fw == "conveyor":
        r["own"] = {"peak_activations": [held]}
    return r


def test_targets_and_headline_are_checked_as_measured():
    rows = [row("1f1b", "conveyor", 1.00, ideal=0.96, held=4, bound=4),
            row("1f1b", "torch", 0.98, ideal=0.96),
            row("zb-h1", "conveyor", 0.78, ideal=0.76, held=5, bound=4),
            row("zbv", "torch", 0.85),
            {"schedule": "zbv", "framework": "conveyor", "P": 4, "M": 8,
             "unsupported": "conveyor: unknown schedule 'zbv'"}]
    t = targets_schedules(rows)
    assert [(lb, ok) for lb, _, ok in t["ratio"]] == [("1f1b P=4 M=8", True),
                                                      ("zb-h1 P=4 M=8", True)]
    assert [(lb, round(v, 3), ok) for lb, v, ok in t["vs_torch"]] == [
        ("1f1b P=4 M=8", 1.020, False)]
    assert [(lb, h, ok, b) for lb, h, ok, b in t["memory"]] == [
        ("1f1b P=4 M=8", 4, True, 4), ("zb-h1 P=4 M=8", 5, False, 4)]
    assert t["median_p8"] is None
    h = headline(rows)
    assert h["conveyor_best"] == (0.78, "zb-h1") and h["torch_best"] == (0.85, "zbv")
    assert round(h["vs_1f1b"], 3) == 0.78 and round(h["vs_torch_best"], 3) == 0.918
    table = "\n".join(markdown_schedules(rows))
    assert "| zbv | n/a | n/s | n/s | 850.0 |" in table
    assert "| zb-h1 | 760.0 | 780.0 | 1.026 | - |" in table
