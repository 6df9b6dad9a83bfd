"""Faults beyond a Python exception in the forward (1F1B, M=4, gloo, real
processes; see _fault_jobs.py): at P=4 a rank SIGKILLed in its forward of
micro-batch 2; at P=2 (cheaper, and the same code path) a custom autograd
Function that raises in its backward of micro-batch 2, a receive that gets a
shape header it cannot read, and one that gets a larger tensor than announced
(gloo aborts the receiver; the launcher names where it was from its last
words). Each must end every process
within 30 s of the fault, name the cause exactly once, and leave no process.

The local launcher runs all four; torchrun runs the kill and the oversize
message, the two faults that end a rank by a signal, where what happens
depends on the launcher (its agent sees the death and stops the group). The backward and the header fail as a StageError on one rank, the path
test_failures.py already checks under torchrun. The measured times are
printed (run with -s); benchmarks/bench_faults.py records them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.runtime import RankFailedError, launch
from tests.runtime._fault_jobs import fault_job
from tests.runtime._procs import ROOT, alive, env

pytestmark = pytest.mark.runtime

BOUND_S = 30.0  # the bound, fault to the last process gone
P = {"kill": 4, "backward": 2, "header": 2, "oversize": 2}
CAUSE = {  # the fault is on rank P // 2
    "kill": ("rank 2 was killed by signal 9 (SIGKILL) while busy in 2F2 (forward of "
             "micro-batch 2) without reporting an error"),
    # gloo aborts the receiver; where it was comes from its last words
    "oversize": ("rank 1 was killed by signal 6 (SIGABRT) while {} 1RECV_F2 (receive of the "
                 "input of micro-batch 2) on cut 0 (stage 0 -> stage 1) without reporting"),
    "backward": ("rank 1 (stage 1) failed in 1B2 (backward of micro-batch 2): "
                 "FloatingPointError: bad gradient in micro-batch 2"),
    "header": ("rank 1 cannot read the shape header rank 0 sent on cut 0 (stage 0 -> stage 1) "
               "for 1RECV_F0 (receive of the input of micro-batch 0): tensor 0: dtype code 99"),
}


def pids_gone(pid_dir: Path, n: int) -> float:
    """Wait (5 s at most) until no rank of the run is alive; returns the
    wall-clock time at which none was."""
    pids = [int(p.read_text()) for p in sorted(pid_dir.glob("rank*.pid"))]
    assert len(pids) == n, pids  # every rank started
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in pids if alive(p)], "ranks left running"
    return time.time()


def fault_to_exit(pid_dir: Path, ended: float) -> float:
    return ended - float((pid_dir / "fault_at").read_text().split()[0])


@pytest.mark.parametrize("fault", ["kill", "backward", "header", "oversize"])
def test_local_launcher(fault, tmp_path, capfd):
    with pytest.raises(RankFailedError) as err:
        launch(fault_job, nprocs=P[fault], args=(fault, str(tmp_path)))
    took = fault_to_exit(tmp_path, pids_gone(tmp_path, P[fault]))
    assert took < BOUND_S
    out = capfd.readouterr()
    text = str(err.value) + out.err + out.out
    causes = [CAUSE[fault].format(w) for w in ("busy in", "waiting on rank 0 in")]
    assert sum(text.count(c) for c in set(causes)) == 1, text[-3000:]
    assert err.value.rank == P[fault] // 2
    if fault == "backward":  # the user's frame is shown, autograd's engine is not
        assert "_fault_jobs.py" in str(err.value) and "/torch/autograd/" not in str(err.value)
        assert ">1B2<" in str(err.value)
    print(f"\nlocal {fault}: every process gone {took:.2f} s after the fault")


@pytest.mark.parametrize("fault, signal_text", [("kill", "Signal 9 (SIGKILL)"),
                                                ("oversize", "Signal 6 (SIGABRT)")])
def test_torchrun(fault, signal_text, tmp_path):
    n = P[fault]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", str(n),
                          str(ROOT / "tests/runtime/_fault_script.py"), fault, str(tmp_path),
                          str(n)], cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=120)
    ended = time.time()  # torchrun's agent has reaped its workers
    assert run.returncode != 0
    pids_gone(tmp_path, n)
    took = fault_to_exit(tmp_path, ended)
    assert took < BOUND_S
    text = run.stderr + run.stdout
    # The agent names the cause (its "Root Cause" block) once; conveyor's
    # survivors only say whom they lost, where, and never claim the cause.
    assert text.count(f"{signal_text} received by PID") == 1, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("conveyor:")]
    assert all("lost" in line and "SIG" not in line for line in lines), lines
    # A neighbour that saw the connection close names the peer and the cut.
    for line in lines:
        if f"lost rank {n // 2}" in line and "RECV" in line:
            assert " on cut " in line, line
    print(f"\ntorchrun {fault}: every process gone {took:.2f} s after the fault")
