"""The last-words folders: a launcher removes its own; one a SIGKILLed launcher
left behind is removed by the next launch, and nothing else is.

No processes are launched here: the folders are made as a launcher names
them, with the pid of a process that has ended (a dead launcher) or of this
one (a live launcher). The end-to-end case (a real launcher SIGKILLed, the
next launch sweeping its folder) is in test_checkpoint_kill.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conveyor.runtime.procs import lastwords
from conveyor.runtime.procs.lastwords import PREFIX, make_dir, remove_dir, sweep


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _folder(root, pid: int, started: int, files=("rank0", "rank1")) -> str:
    d = root / f"{PREFIX}{pid}-{started}-abc123"
    d.mkdir()
    for f in files:
        (d / f).write_bytes(b"\0" * 512)
    return d.name


def test_sweep_removes_only_folders_of_launchers_that_are_gone(tmp_path):
    me = os.getpid()
    started = lastwords._started(me)
    assert started is not None
    dead = _folder(tmp_path, _dead_pid(), 12345)
    reused = _folder(tmp_path, me, started + 1)        # this pid, but another start: gone
    live = _folder(tmp_path, me, started)               # this launcher: kept
    mixed = _folder(tmp_path, _dead_pid(), 1, files=("rank0", "notes.txt"))
    other = tmp_path / "conveyor-last-words-k3j4h5"     # older naming: no proof, kept
    other.mkdir()
    (tmp_path / f"{PREFIX}1-2-x").write_text("a file, not a folder")
    gone = sweep(tmp_path)
    assert sorted(gone) == sorted([dead, reused])
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live, mixed, other.name, f"{PREFIX}1-2-x"])
    assert os.listdir(tmp_path / mixed) == ["notes.txt"]  # only the rank files went


def test_a_launcher_names_its_folder_after_itself_and_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lastwords.tempfile, "tempdir", str(tmp_path))
    stale = _folder(tmp_path, _dead_pid(), 7)
    d = make_dir()
    me = os.getpid()
    assert os.path.basename(d).startswith(f"{PREFIX}{me}-{lastwords._started(me)}-")
    assert not (tmp_path / stale).exists()  # swept on the way
    (lastwords.Path(d) / "rank0").write_bytes(b"\0" * 512)
    remove_dir(d)
    assert os.listdir(tmp_path) == []
