"""A failing rank never leaves the others hanging.

Stage 2 of a 4-stage 1F1B pipeline raises in its forward of micro-batch 3.
Under the local launcher and under torchrun alike, every process must exit
non-zero within 30 s, the failing rank, stage, micro-batch and the original
error must be printed once, and no process may be left behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.runtime import RankFailedError, launch
from tests.runtime import _jobs
from tests.runtime._procs import ROOT, alive, env, why_failed

pytestmark = pytest.mark.runtime

SCRIPT = """
import sys
from conveyor.runtime import launch
from tests.runtime._jobs import boom_job

if __name__ == "__main__":
    launch(boom_job, nprocs=4, args=(sys.argv[1],))
"""
CAUSE = "rank 2 (stage 2) failed in 2F3 (forward of micro-batch 3): ValueError: boom on micro-batch 3"


def run_boom(tmp_path: Path, launcher: list[str]) -> tuple[subprocess.CompletedProcess, float, list[int]]:
    script = tmp_path / "boom.py"
    script.write_text(SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    t0 = time.monotonic()
    proc = subprocess.run(launcher + [str(script), str(pids)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    found = [int(p.read_text()) for p in sorted(pids.glob("rank*.pid"))]
    return proc, elapsed, found


def check(proc, elapsed, pids):
    why = why_failed(proc.stdout + proc.stderr)  # so that a flake explains itself
    assert proc.returncode != 0, why
    assert elapsed < 30, f"took {elapsed:.1f} s\n{why}"
    assert len(pids) == 4, why  # every rank started
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "ranks left running"
    err = proc.stderr
    assert err.count("boom on micro-batch 3") == 1, err
    assert CAUSE in err
    assert "where (innermost last)" in err and "_jobs.py" in err
    assert ">2F3<" in err  # the schedule grid with the failing cell marked


def test_local_launcher_stops_every_rank(tmp_path):
    proc, elapsed, pids = run_boom(tmp_path, [sys.executable])
    check(proc, elapsed, pids)
    assert "RankFailedError" in proc.stderr


def test_torchrun_stops_every_rank(tmp_path):
    proc, elapsed, pids = run_boom(tmp_path, [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"])
    check(proc, elapsed, pids)
    # Survivors that noticed say so in one line, without repeating the cause.
    for line in proc.stderr.splitlines():
        if "lost rank" in line:
            assert line.startswith("conveyor: rank ") and "boom" not in line


def test_rank_that_dies_without_a_report():
    t0 = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 1 died \(exit code 3\) without reporting"):
        launch(_jobs.crash_job, nprocs=2)
    assert time.monotonic() - t0 < 30
