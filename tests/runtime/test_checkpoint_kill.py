"""SIGKILL during a save, over shm and over gloo: the checkpoint on disk is
always one whole save, the next save clears what the killed one left, and
nothing of the user's beside it is touched.

Two trials (P = 2, a save after every step), a launch each: over shm the
launching script is SIGKILLed (every rank dies with it); over gloo rank 0,
the rank that publishes each save. The kill lands at a random moment after
the first save; saving is most of each iteration, so most kills land inside
one (the test prints whether it did: a save's journal is left behind). Then:

* the checkpoint loads, and equals the unsplit model trained for as many
  steps as its manifest says (float64; the stage split sums the same terms
  in the same order, but the tolerance 1e-10 allows the BLAS to round a
  different shape differently);
* no rank is alive 15 s after the kill;
* a save from a fresh process into the same folder leaves exactly one
  checkpoint's files (marker, manifest, one rank file) and the user's file;
* the user's folders beside it, ``ckpt.old`` and ``ckpt.tmp`` (which the old
  code deleted), are untouched;
* the last-words folder the SIGKILLed launcher could not remove is swept by
  the next launch (the second trial's).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conveyor.runtime.procs import ckptdir
from conveyor.runtime.procs.lastwords import PREFIX
from conveyor.runtime.train.checkpoint_io import export_state_dict, read_manifest
from tests.runtime import _ckpt_kill_jobs as jobs
from tests.runtime._procs import ROOT, alive, env, why_failed

pytestmark = pytest.mark.runtime

SCRIPT = """
import sys
from conveyor.runtime import launch
from tests.runtime._ckpt_kill_jobs import save_loop_job

if __name__ == "__main__":
    launch(save_loop_job, nprocs=2, args=(sys.argv[1], sys.argv[2], sys.argv[3]))
"""

TRIALS = [("shm", "launcher"), ("dist", "rank0")]  # in this order: see the last test
_left_by_killed_launchers: list[str] = []
_launches_after_a_kill: list[int] = []


def _kill_during_save(root: Path, transport: str, victim: str, delay: float) -> dict:
    script = root / "save_loop.py"
    script.write_text(SCRIPT)
    ckpt, pids = root / "ckpt", root / "pids"
    pids.mkdir()
    if _left_by_killed_launchers:
        _launches_after_a_kill.append(1)
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), transport, str(pids)],
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180  # start-up on a loaded 2-core machine
        while not (pids / "saved").exists():
            if proc.poll() is not None:
                pytest.fail(why_failed(proc.stderr.read().decode()))
            assert time.monotonic() < deadline, "the first save never finished"
            time.sleep(0.02)
        ranks = [int((pids / f"rank{r}.pid").read_text()) for r in range(2)]
        time.sleep(delay)
        os.kill(proc.pid if victim == "launcher" else ranks[0], signal.SIGKILL)
        t0 = time.monotonic()
        while any(alive(p) for p in ranks) and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        left = [p for p in ranks if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, f"ranks {left} outlived the kill of the {victim}"
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if victim == "launcher":
        _left_by_killed_launchers.extend(
            str(p) for p in Path(tempfile.gettempdir()).glob(f"{PREFIX}{proc.pid}-*"))
    return {"mid_save": (ckpt / ckptdir.JOURNAL).exists()}


@pytest.mark.parametrize("transport, victim", TRIALS, ids=[f"{t}-{v}" for t, v in TRIALS])
def test_a_kill_during_a_save_leaves_one_whole_checkpoint(tmp_path, transport, victim):
    root = tmp_path
    for name in ("ckpt.old", "ckpt.tmp"):
        (root / name).mkdir()
        (root / name / "u.txt").write_text("mine")
    delay = random.Random(f"{transport}-{victim}").uniform(0.0, 0.6)
    got = _kill_during_save(root, transport, victim, delay)
    print(f"\n{transport}, SIGKILL of the {victim} after {delay:.2f} s: "
          f"{'inside' if got['mid_save'] else 'between'} saves")
    ckpt = root / "ckpt"
    step = read_manifest(ckpt)["step"]
    assert step >= 1
    saved, want = export_state_dict(ckpt), jobs.reference(step)
    assert saved.keys() == want.keys()
    for k in want:
        assert torch.allclose(saved[k], want[k], rtol=1e-10, atol=1e-12), (k, step)
    # A new process's save clears what the killed save left, and nothing else.
    (ckpt / "notes.txt").write_text("mine")
    torch.set_num_threads(1)
    pipe = jobs.build()
    pipe.load(ckpt)
    pipe.save(ckpt)
    names = sorted(os.listdir(ckpt))
    assert len(names) == 4 and "notes.txt" in names and ckptdir.MANIFEST in names, names
    assert ckptdir.JOURNAL not in names and ckptdir.MARKER in names
    assert [n for n in names if n.endswith(".pt")] == list(read_manifest(ckpt)["files"])
    for name in ("ckpt.old", "ckpt.tmp"):
        assert (root / name / "u.txt").read_text() == "mine"


def test_the_last_words_of_a_killed_launcher_were_swept_by_the_next_launch():
    # The launcher of the second trial started after the first trial's was
    # SIGKILLed; launching, it sweeps the folders of launchers no longer running.
    if not (_left_by_killed_launchers and _launches_after_a_kill):
        pytest.skip("needs both trials above, in order")
    still = [p for p in _left_by_killed_launchers if os.path.exists(p)]
    assert not still, f"last-words folders of killed launchers left behind: {still}"
