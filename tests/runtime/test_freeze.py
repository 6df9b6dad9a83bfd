"""A rank that freezes (SIGSTOP, or a sleep in user code) while the others go
on: every rank process ends within timeout_s + BOUND_S of the freeze, with
one hang table that names the collective the others wait in, and then the
command (the launching script, or torchrun's agent) ends too, non-zero
(issue 33; issue 26 item 2 for SIGSTOP under shm and torchrun). Real processes, P = 2 (dp 2 x
pp 2 for the data-parallel all-reduce), jobs in _freeze_jobs.py.

Each point of _freeze_jobs.POINTS runs once here, and each way of freezing,
transport and launcher runs at several points (pairwise, not the full
product, to keep the suite short); benchmarks/bench_faults.py --freeze runs
the full matrix with 20 trials per case. The launches run a few at a time in
parallel: most of a case is the timeout, spent asleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime._freeze_jobs import WAITED_IN, nprocs
from tests.runtime._procs import ROOT, alive, env, why_failed

pytestmark = pytest.mark.runtime

TIMEOUT_S = 3.0
# The stated bound, freeze -> last rank gone, beyond timeout_s: the waiting
# rank may reach its wait after the freeze (the rest of its step), the
# reporter waits up to 5 s (hang.ANSWER_S) for ranks that neither answer nor
# show as stopped, and the watches poll every 0.25 s. Measured well inside
# it (benchmarks/faults.md); generous because the suite shares its cores.
# The command's own end (the agent's or script's interpreter teardown) is not
# bounded here: under heavy load torchrun's agent took 10-20 s to finalise.
BOUND_S = 15.0
PARALLEL = 4     # cases launched at once
SCRIPT = ROOT / "tests/runtime/_freeze_script.py"

CASES = [  # (launcher, point, how, transport): each how with each transport somewhere
    ("local", "dp", "stop", "shm"),
    ("local", "between", "stop", "shm"),
    ("local", "agreement", "sleep", "dist"),
    ("local", "loss", "sleep", "shm"),
    ("local", "tie", "stop", "dist"),
    ("local", "save", "sleep", "dist"),
    ("torchrun", "between", "stop", "dist"),  # issue 26: 46 s before, with timeout_s=10
    ("torchrun", "agreement", "sleep", "shm"),
]


def command(launcher: str, point: str, how: str, transport: str, out_dir: Path,
            timeout_s: float = TIMEOUT_S) -> list[str]:
    head = [sys.executable]
    if launcher == "torchrun":
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(nprocs(point))]
    return head + [str(SCRIPT), point, how, transport, str(out_dir), str(timeout_s)]


def run_cases(cases, root: Path, parallel: int, *, timeout_s: float = TIMEOUT_S,
              limit_s: float = 300.0) -> dict:
    """Run each case's command, ``parallel`` at a time. Per case: its exit
    code, output and directory, whether it had to be killed at ``limit_s``,
    and two wall-clock times: when its last rank process was gone (polled
    every 20 ms) and when the command ended (torchrun's agent, or the
    launching script, after it reaped the ranks)."""
    out: dict = {}
    todo = list(enumerate(cases))
    running: dict = {}
    while todo or running:
        while todo and len(running) < parallel:
            i, case = todo.pop(0)
            d = root / f"case{i}"
            d.mkdir()
            log = open(d / "output", "w")
            proc = subprocess.Popen(command(*case, d, timeout_s), cwd=ROOT, env=env(),
                                    stdout=log, stderr=subprocess.STDOUT)
            running[case] = {"proc": proc, "log": log, "dir": d, "t0": time.monotonic(),
                             "pids": None, "ranks_gone": None}
        time.sleep(0.02)
        for case, r in list(running.items()):
            d, n = r["dir"], nprocs(case[1])
            if r["pids"] is None and len(list(d.glob("rank*.pid"))) == n:
                time.sleep(0.01)  # each file is written whole before the next begins
                r["pids"] = [int((d / f"rank{k}.pid").read_text()) for k in range(n)]
            if r["pids"] and r["ranks_gone"] is None and not any(alive(p) for p in r["pids"]):
                r["ranks_gone"] = time.time()
            proc = r["proc"]
            if proc.poll() is None and time.monotonic() - r["t0"] < limit_s:
                continue
            ended = time.time()
            killed = proc.poll() is None  # a job that never ended: the failure under test
            if killed:
                proc.kill()
                proc.wait()
            r["log"].close()
            out[case] = {"rc": proc.returncode, "ended": ended, "killed": killed, "dir": d,
                         "ranks_gone": r["ranks_gone"], "text": (d / "output").read_text()}
            del running[case]
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_cases(CASES, tmp_path_factory.mktemp("freeze"), PARALLEL)


def check(case, o: dict, *, timeout_s: float = TIMEOUT_S) -> tuple[float, float]:
    """Assert what every case must show; returns the seconds from the freeze
    to the last rank gone and to the command's end."""
    launcher, point, how, transport = case
    text, d = o["text"], o["dir"]
    assert o["rc"] != 0, why_failed(text)
    assert text.count("conveyor: hang:") == 1, why_failed(text)  # one table, once
    table = text[text.index("conveyor: hang:"):].splitlines()
    rows = {int(m.group(1)): line for line in table[1:] if (m := re.match(r"(\d)\s{2,}", line))}
    n = nprocs(point)
    assert sorted(rows) == list(range(n)), "\n".join(table[:8])
    frozen = 3 if point == "dp" else 1
    want = "stopped by a signal" if how == "stop" else "no action or collective"
    assert want in rows[frozen], rows[frozen]
    # A rank that waits in the collective the frozen rank never joined, and
    # the headline names what the reporter waited in.
    assert any(re.match(r"\d\s+waiting\s+[\d.]+ s\s+" + re.escape(WAITED_IN[point]), row)
               for row in rows.values()), "\n".join(table[:8])
    assert re.search(r"waited in the .* over ranks [\d, -]+ longer than", table[0]), table[0]
    assert not o["killed"], "the command did not end"
    pids = [int((d / f"rank{r}.pid").read_text()) for r in range(n)]
    assert not [p for p in pids if alive(p)], "ranks left running"
    assert o["ranks_gone"] is not None
    fault_at = float((d / "fault_at").read_text().split()[0])
    took = o["ranks_gone"] - fault_at
    assert took < timeout_s + BOUND_S, f"{took:.1f} s from the freeze to the last rank gone"
    return took, o["ended"] - fault_at


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_a_frozen_rank_ends_every_process_with_the_collective_named(case, outcomes):
    ranks, command_end = check(case, outcomes[case])
    print(f"\n{'/'.join(case)}: last rank gone {ranks:.1f} s, command ended "
          f"{command_end:.1f} s after the freeze (timeout_s={TIMEOUT_S:g})")


SUSPEND_SCRIPT = """
import os, signal, sys, time
import torch.distributed as dist
from conveyor.runtime.procs import hang
server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
client = dist.TCPStore("127.0.0.1", server.port, is_master=False)
w = hang._Watch(0, 1, client)  # one rank: a report would not wait for answers
p = w.progress
p.timeout_s = 2.0
p.wait_since = time.monotonic()
p.collective = "the step agreement all-gather over ranks 0, 1"
os.kill(os.getpid(), signal.SIGSTOP)  # the whole job suspended (Ctrl-Z); resumed 4 s later
time.sleep(1.0)  # four polls of the watch, running again: 1 s of waiting, not 5
p.collective = None
print("no report", flush=True)
"""


def test_a_job_stopped_and_resumed_as_a_whole_is_not_taken_for_a_hang(tmp_path):
    # Ctrl-Z then fg, or a scheduler's suspend and resume, stops every rank
    # at once: nobody waited on a frozen peer. Without the watch's stall
    # compensation this rank reported a hang (exit 75) the moment it ran again.
    script = tmp_path / "suspend.py"
    script.write_text(SUSPEND_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
           and time.monotonic() < deadline):
        time.sleep(0.02)
    time.sleep(4.0)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "no report" in out, err[-2000:]
    assert "conveyor: hang" not in err
