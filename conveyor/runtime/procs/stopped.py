"""Peers that are stopped, not dead: what the hang report can learn of them
and how it ends them.

A rank stopped by SIGSTOP (``kill -STOP``, Ctrl-Z on it alone) or held by a
debugger runs no thread at all: its watch cannot publish where it is, cannot
see the exit flag, and SIGTERM stays pending until it runs again. Left
alone, the reporter would wait for its answer for nothing, and the
launcher's SIGTERM would not end it: the local launcher waited 3 s before
its SIGKILL, torchrun's agent 30 s (its shutdown timeout), which is what
made torchrun's exit after a SIGSTOP take 46 s with ``timeout_s=10``.

So each watched rank publishes who it is (host, boot, pid, start time) in
the store, and the reporter, on the same host, reads the state of a rank
that does not answer from ``/proc``. A stopped one is shown as such at once
and, once the exit flag is up, sent SIGCONT: it runs again, its watch sees
the flag and exits like every other rank. The start time makes sure that the
signal goes to that rank's process and not to a later one with its pid.
Ranks on other hosts are ended by their own launcher (torchrun's agent).
"""

from __future__ import annotations

import os
import signal
import socket

__all__ = ["identity", "stopped", "resume"]

_WHY = {"T": "stopped by a signal (SIGSTOP, SIGTSTP)", "t": "held by a debugger (tracing stop)"}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def identity() -> list:
    """This process, as another process on the same host can find it:
    [host, boot id, pid, start time] (start time -1 without /proc)."""
    st = _stat(os.getpid())
    return [socket.gethostname(), _boot_id(), os.getpid(), -1 if st is None else st[1]]


def _same_process(ident) -> bool:
    host, boot, pid, start = ident
    if host != socket.gethostname() or boot != _boot_id() or start < 0:
        return False
    st = _stat(pid)
    return st is not None and st[1] == start


def stopped(ident) -> str | None:
    """Why the process ``ident`` (from ``identity``) runs no thread, when it is
    on this host and stopped; None otherwise (running, gone, elsewhere)."""
    if not _same_process(ident):
        return None
    st = _stat(ident[2])
    return None if st is None else _WHY.get(st[0])


def resume(ident) -> None:
    """SIGCONT to the process ``ident``, if it is still that process."""
    if _same_process(ident):
        try:
            os.kill(ident[2], signal.SIGCONT)
        except OSError:
            pass
