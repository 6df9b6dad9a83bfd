"""`conveyor demo`: the README's first command, end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.sim import load_timeline

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[2]


def test_demo_trains_to_90_percent_and_reports_the_bubble(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "conveyor", "demo", "--out", str(tmp_path),
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert wall < 180
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
