"""Last words: where a rank was when it died without a report.

A rank killed by a signal (kill -9, the OOM killer, gloo aborting on a message
larger than its receive buffer) cannot say where it was. So, under the local
launcher, each watched rank keeps its position in a small memory-mapped file
(``<dir>/rank{r}``; the launcher makes ``dir`` per attempt and passes it in
CONVEYOR_LAST_WORDS): the action it is in, and the peer it waits on. The
kernel keeps the file's contents when the process dies, and the launcher
reads them into its report: "rank 2 was killed by signal 6 (SIGABRT) ... while
waiting on rank 1 in 2RECV_F2 (receive of the input of micro-batch 2) on
cut 1 (stage 1 -> stage 2)".

Cost: one slice assignment into the map per action and per wait (about
0.3 us); each action's record (header and text) is formatted once, at
set-up, the first time it is written for a wait on a peer.

Record: byte 0 state (0 none, 1 busy, 2 waiting), bytes 1-4 the peer
(int32; -1 while waiting in a collective), bytes 5-6 the text's length,
then the text (UTF-8).

The folder (``make_dir``) is named after the launcher that made it, its pid
and the start time of that process: the launcher removes it when the run
ends, and a launcher killed by SIGKILL (which cannot remove anything) leaves
it to the next launch on the machine, which removes every such folder whose
launcher is no longer running (``sweep``). Only the ``rank{r}`` files are
removed, then the folder if nothing else is in it.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import tempfile
from pathlib import Path

__all__ = ["ENV", "LastWords", "read", "make_dir", "remove_dir", "sweep"]

ENV = "CONVEYOR_LAST_WORDS"
PREFIX = "conveyor-last-words-"
_FOLDER = re.compile(rf"^{PREFIX}(\d+)-(\d+)-[A-Za-z0-9_]+$")
_FILE = re.compile(r"^rank\d+$")
SIZE = 512
_HEAD = struct.Struct("<bih")
_NONE, _BUSY, _WAITING = 0, 1, 2


class LastWords:
    """This rank's position, kept where the launcher can read it after a death."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            self.map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.texts: dict = {}
        self.busy_records: dict = {}     # action -> its "busy" record's bytes
        self.waiting_records: dict = {}  # (peer, action) -> its "waiting" record's bytes

    @classmethod
    def from_env(cls, rank: int) -> "LastWords | None":
        d = os.environ.get(ENV)
        if not d:
            return None
        try:
            return cls(Path(d) / f"rank{rank}")
        except OSError:  # no place to write: the report just says less
            return None

    def learn(self, actions) -> None:
        """Format the texts of these actions once (a rank's schedule row)."""
        from conveyor.runtime.errors import cut_of, describe

        for a in actions:
            self.texts.setdefault(a, (describe(a) + cut_of(a)).encode()[:SIZE - _HEAD.size])

    def _record(self, state: int, peer: int, action) -> bytes:
        text = self.texts.get(action, b"")
        return _HEAD.pack(state, peer, len(text)) + text

    def _put_text(self, state: int, peer: int, text: bytes) -> None:
        self.map[_HEAD.size:_HEAD.size + len(text)] = text
        _HEAD.pack_into(self.map, 0, state, peer, len(text))

    def busy(self, action) -> None:
        rec = self.busy_records.get(action)
        if rec is None:
            rec = self.busy_records[action] = self._record(_BUSY, -1, action)
        self.map[:len(rec)] = rec  # header and text in one copy

    def waiting(self, peer: int, action) -> None:
        rec = self.waiting_records.get((peer, action))
        if rec is None:
            rec = self.waiting_records[(peer, action)] = self._record(_WAITING, peer, action)
        self.map[:len(rec)] = rec

    def collective(self, text: bytes) -> None:
        """Waiting in a collective; ``text`` (UTF-8, at most SIZE - 7 bytes)
        says which and over which ranks."""
        self._put_text(_WAITING, -1, text)

    def idle(self) -> None:
        _HEAD.pack_into(self.map, 0, _NONE, -1, 0)


def read(directory, rank: int) -> str:
    """" while busy in ..." / " while waiting on rank p in ..." / " while
    waiting in <collective>", or "" when nothing is known."""
    try:
        raw = (Path(directory) / f"rank{rank}").read_bytes()
        state, peer, n = _HEAD.unpack_from(raw, 0)
        text = raw[_HEAD.size:_HEAD.size + n].decode(errors="replace")
    except (OSError, struct.error, ValueError):
        return ""
    if state == _BUSY and text:
        return f" while busy in {text}"
    if state == _WAITING and text:
        return (f" while waiting on rank {peer} in {text}" if peer >= 0
                else f" while waiting in {text}")
    return ""


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/pid/stat
    field 22), or None when it is gone or this is not Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def remove_dir(directory) -> None:
    """Remove a last-words folder: its ``rank{r}`` files, then the folder
    when nothing else is in it."""
    d = Path(directory)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        if _FILE.match(name):
            try:
                os.unlink(d / name)
            except OSError:
                pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def sweep(root=None) -> list[str]:
    """Remove the last-words folders under ``root`` (the temp folder) that
    this user's launchers made and that outlived them (a launcher killed by
    SIGKILL). A folder whose launcher still runs is kept. Returns the names
    removed."""
    root = Path(root or tempfile.gettempdir())
    gone = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return gone
    for e in entries:
        m = _FOLDER.match(e.name)
        try:
            if not m or not e.is_dir(follow_symlinks=False) or \
                    e.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _started(int(m.group(1))) == int(m.group(2)):
            continue  # its launcher runs
        remove_dir(e.path)
        if not os.path.exists(e.path):
            gone.append(e.name)
    return gone


def make_dir() -> str:
    """A new last-words folder for one attempt of this launcher; the
    leftovers of killed launchers are swept first. Where /proc is missing
    the folder is still made, and nothing is swept."""
    pid = os.getpid()
    started = _started(pid)
    if started is not None:
        sweep()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{started or 0}-")
