"""A rank stuck in its forward: every rank's position, printed once, and no
process left (P=4, gloo, real processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from conveyor.runtime import launch
from conveyor.runtime.errors import RankFailedError
from conveyor.runtime.procs.hang import EXIT_CODE
from tests.runtime import _ckpt_jobs
from tests.runtime._procs import ROOT, alive

pytestmark = pytest.mark.runtime

TIMEOUT_S = 3.0


def test_a_stuck_forward_is_named_and_every_rank_exits(tmp_path, capfd):
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as err:
        launch(_ckpt_jobs.hang_job, nprocs=4, args=(str(tmp_path), TIMEOUT_S))
    took = time.monotonic() - t0
    assert f"stopped on a hang (exit code {EXIT_CODE})" in str(err.value)
    check_report(capfd.readouterr().err, tmp_path)
    print(f"\nhang reported and all exited {took:.1f} s after launch (timeout_s={TIMEOUT_S})")


def test_the_same_under_torchrun(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "4", str(ROOT / "tests/runtime/_hang_script.py"),
                          str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    took = time.monotonic() - t0
    assert run.returncode != 0
    check_report(run.stderr + run.stdout, tmp_path)
    print(f"\ntorchrun: hang reported and all exited {took:.1f} s after start")


def check_report(err_text: str, pid_dir) -> None:
    assert err_text.count("conveyor: hang:") == 1, err_text[-3000:]  # one table, once
    table = err_text[err_text.index("conveyor: hang:"):].splitlines()
    rows = {int(m.group(1)): line for line in table
            if (m := re.match(r"(\d)\s{2,}", line))}
    assert sorted(rows) == [0, 1, 2, 3]
    assert re.search(r"^2\s+busy\s+3\s+[\d.]+ s\s+2F3 \(forward of micro-batch 3\)", rows[2])
    for r in (0, 1, 3):  # each other rank waits on a neighbour
        m = re.match(r"\d\s+waiting\s+(\d)\s", rows[r])
        assert m and abs(int(m.group(1)) - r) == 1, rows[r]
    pids = [int((pid_dir / f"rank{r}.pid").read_text()) for r in range(4)]
    assert not any(alive(p) for p in pids)


EXIT_SCRIPT = """
import torch.distributed as dist
from conveyor.runtime.procs import hang
hang.POLL_S = 0.0  # the watch polls without pause: it is nearly always inside a store call
server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
client = dist.TCPStore("127.0.0.1", server.port, is_master=False)
hang._Watch(0, 2, client)
print("exiting")
"""


def test_a_rank_that_finishes_while_its_watch_polls_exits_cleanly(tmp_path):
    # A daemon thread inside a C++ store call when the interpreter finalises
    # is ended by pthread_exit, and std::terminate aborts the process (exit
    # -6): ranks that had finished died of SIGABRT under torchrun. The watch
    # is stopped at exit now; without that this fails nearly every time.
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0 and "exiting" in run.stdout, run.stderr[-2000:]


def test_the_first_step_after_a_resume_still_gets_the_first_step_allowance():
    # After pipe.load the step count is high, but the handshakes are still
    # ahead: the allowance follows the steps this process ran, not pipe.steps.
    import torch

    from conveyor.runtime import Pipeline
    from conveyor.runtime.procs.hang import FIRST_STEP, Progress, _wrap_interpreter

    pipe = Pipeline(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
                    loss_fn=torch.nn.functional.mse_loss, optimizer=None, microbatches=2)
    p, seen = Progress(), []
    _wrap_interpreter(pipe.interp, p, pipe, 4.0)
    pipe.interp.after(0, lambda: seen.append(p.timeout_s))
    pipe.steps = 10  # as pipe.load leaves it
    x = torch.randn(4, 2)
    for _ in range(3):
        pipe.step(x, x)
    assert seen == [4.0 * FIRST_STEP, 4.0, 4.0]
    assert p.step is None  # outside a step again
