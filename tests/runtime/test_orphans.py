"""Nothing outlives the script that called ``launch``, and nothing listens beyond loopback.

A script that launched two ranks is killed mid-step, by SIGTERM (what `kill`,
job schedulers and systemd send), SIGHUP (a closed terminal) and by SIGKILL
(nothing can be caught): no
rank may be alive 10 s later. The measured exit times are printed (run with
-s to see them); they are not asserted beyond the 10 s bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.runtime import launch
from tests.runtime import _hardening_jobs as jobs
from tests.runtime._procs import ROOT, env, alive

pytestmark = pytest.mark.runtime

SCRIPT = """
import sys
from conveyor.runtime import launch
from tests.runtime._hardening_jobs import forever_job

if __name__ == "__main__":
    launch(forever_job, nprocs=2, args=(sys.argv[1],))
"""


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2"]


def _default_signals() -> None:
    """The script under test starts with SIGTERM and SIGHUP at their defaults:
    a test run under nohup (or a CI agent that ignores SIGHUP) would hand the
    ignore down, and the launcher rightly keeps an inherited ignore."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def kill_mid_step(tmp_path: Path, sig: int, launcher: list[str]) -> tuple[float, int | None]:
    """Start the script, wait until it steps, send ``sig`` to it; returns the
    seconds until no rank is alive (or +inf after 10 s) and the script's status."""
    script = tmp_path / "forever.py"
    script.write_text(SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(launcher + [str(script), str(pids)], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 90
        while not (pids / "stepping").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the ranks never stepped"
            time.sleep(0.05)
        ranks = [int(p.read_text()) for p in sorted(pids.glob("rank*.pid"))]
        assert len(ranks) == 2 and all(alive(p) for p in ranks)
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        while any(alive(p) for p in ranks) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        gone = time.monotonic() - t0
        left = [p for p in ranks if alive(p)]
        for p in left:  # never leave them behind, even when the test fails
            os.kill(p, signal.SIGKILL)
        code = proc.wait(10)
        return (gone if not left else float("inf")), code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# torchrun's agent itself stops its ranks on SIGTERM (docs/runtime.md); a
# SIGKILLed agent relies on conveyor's parent-death signal, so that is tested.
@pytest.mark.parametrize("launcher, sig", [("local", signal.SIGTERM), ("local", signal.SIGHUP),
                                           ("local", signal.SIGKILL),
                                           ("torchrun", signal.SIGKILL)],
                         ids=["local-SIGTERM", "local-SIGHUP", "local-SIGKILL",
                              "torchrun-SIGKILL"])
def test_killing_the_script_mid_step_leaves_no_rank(tmp_path, sig, launcher):
    gone, code = kill_mid_step(tmp_path, sig, [sys.executable] if launcher == "local"
                               else TORCHRUN)
    print(f"\n{launcher}: {signal.Signals(sig).name} to the launching process: every rank "
          f"gone after {gone:.2f} s")
    assert gone <= 10.0
    if launcher == "local":
        # The script dies of the signal itself (SIGTERM: after stopping its ranks).
        assert code == -sig


@pytest.fixture(scope="module")
def live_run():
    """One local run: its listeners (read while it runs) and returned tensors."""
    return launch(jobs.listeners_job, nprocs=2)


def test_every_listener_of_a_live_local_run_binds_loopback(live_run):
    got = live_run
    port = got[0]["master_port"]
    parent = got[0]["parent"]
    assert parent == [f"127.0.0.1:{port}"]  # the rendezvous store, loopback only
    for row in got:
        assert row["parent"] == parent
        for addr in row["rank"]:  # gloo's listeners, if it keeps any open
            host = addr.rsplit(":", 1)[0]
            assert host in ("127.0.0.1", "::1"), (row, addr)
    every = [a for row in got for a in row["rank"] + row["parent"]]
    assert not [a for a in every if a.startswith(("0.0.0.0:", ":::"))]


def test_tensors_come_back_from_a_local_run_as_cpu_tensors(live_run):
    import torch

    for r, row in enumerate(row["tensors"] for row in live_run):
        assert row["rank"] == r
        assert torch.equal(row["t"], torch.arange(4) + r)
        assert torch.equal(row["nested"][0][0], torch.full((3,), 2.0 * r))
        assert not row["w"].requires_grad and row["w"].device.type == "cpu"


def test_tensors_come_back_from_a_torchrun_run(tmp_path):
    script = tmp_path / "tensors.py"
    script.write_text("import torch\nfrom conveyor.runtime import launch\n"
                      "from tests.runtime._hardening_jobs import tensor_job\n"
                      "if __name__ == '__main__':\n"
                      "    got = launch(tensor_job, nprocs=2)\n"
                      "    if got is not None:\n"
                      "        print('SUMS', [float(g['t'].sum() + g['nested'][0][0].sum())"
                      " for g in got], [g['t'].device.type for g in got])\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script)], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SUMS [6.0, 16.0] ['cpu', 'cpu']" in out.stdout
