"""Process lifetime and exposure of a local run: what makes every rank die
with the script that launched it, and keeps every listener on loopback.

* ``die_with_parent``: called first thing in a rank; the kernel SIGKILLs the
  rank when its parent dies (PR_SET_PDEATHSIG, Linux).
* ``forward_signals``: in the script, SIGTERM/SIGHUP become ``Signalled`` so
  the launcher stops and reaps its ranks on the way out.
* ``loopback_store``: the rendezvous store on a socket bound to 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading

__all__ = ["die_with_parent", "loopback_interface", "loopback_store", "Signalled",
           "forward_signals"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux).

    The request is made after the process started, so the parent may already
    be gone; then this process was re-parented and must leave at once."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the parent's signal forwarding still applies
    if os.getppid() != parent_pid:
        os._exit(1)


def loopback_interface() -> str:
    """The name of the loopback interface ("lo" on Linux, "lo0" on macOS)."""
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return "lo"


def loopback_store(nprocs: int):
    """The rendezvous store, served from a socket bound to 127.0.0.1 only.

    TCPStore's own server listens on every interface; handing it a socket we
    bound ourselves keeps it on loopback. Port 0: the OS picks a free port,
    and the store keeps it bound until the run ends, so runs cannot collide."""
    from torch.distributed import TCPStore

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(max(128, 2 * nprocs))
        store = TCPStore("127.0.0.1", sock.getsockname()[1], world_size=nprocs,
                         is_master=True, wait_for_workers=False,
                         master_listen_fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store owns the descriptor now, and closes it
    return store


class Signalled(SystemExit):
    """SIGTERM or SIGHUP reached the launching process: leave quietly, with the
    shell's code for death by that signal, once the ranks are stopped."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(128 + signum)


def forward_signals():
    """Install handlers that turn SIGTERM and SIGHUP into ``Signalled`` (so
    the ranks are stopped and reaped on the way out); returns the handlers to
    restore. Only the main thread may install handlers, and a signal the
    caller ignores (SIGHUP under nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {}

    def handler(signum, frame):
        raise Signalled(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN or old is None:
            continue
        saved[sig] = old
        signal.signal(sig, handler)
    return saved
