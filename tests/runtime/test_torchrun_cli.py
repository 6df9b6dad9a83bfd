"""``conveyor torchrun``: torchrun stopped by SIGTERM says so in one line.

Plain torchrun ends a SIGTERM from outside (a job scheduler, kill) in a
traceback of torch's own frames ("SignalException: Process N got signal:
15"); through ``conveyor torchrun`` the same stop prints one line naming the
signal and exits with the shell's code for it (143), and no rank is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.runtime._procs import ROOT, alive, env
from tests.runtime.test_orphans import SCRIPT, _default_signals

pytestmark = pytest.mark.runtime


def test_a_sigterm_to_conveyor_torchrun_ends_in_one_line(tmp_path):
    script = tmp_path / "forever.py"
    script.write_text(SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "torchrun", "--standalone",
                             "--nproc-per-node", "2", str(script), str(pids)], cwd=ROOT,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 120  # torchrun's start on a loaded machine
        while not (pids / "stepping").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the ranks never stepped"
            time.sleep(0.05)
        ranks = [int(p.read_text()) for p in sorted(pids.glob("rank*.pid"))]
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t0 = time.monotonic()
    while any(alive(p) for p in ranks) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not any(alive(p) for p in ranks)
    assert code == 128 + signal.SIGTERM, (code, err[-3000:])
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("conveyor:")]
    assert len(ours) == 1 and "stopped by signal 15 (SIGTERM)" in ours[0], err[-3000:]
