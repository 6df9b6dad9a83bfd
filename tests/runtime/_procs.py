"""What the process-lifetime tests share: the repository root, an environment
in which a child script imports this checkout, and whether a process lives."""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict:
    """os.environ with this checkout first on PYTHONPATH (for child scripts)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH")
                                                     else []))
    return e


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def why_failed(text: str, tail: int = 3000) -> str:
    """For a failed child's assertion message: every line that names an error
    (conveyor's own lines, exceptions, torchrun's root cause) first, then the
    tail. torchrun's agent prints long blocks after a worker's error, so the
    tail alone can miss the worker's own line."""
    keys = ("conveyor:", "Error", "error:", "exitcode", "Signal ")
    named = [line for line in text.splitlines() if any(k in line for k in keys)]
    return "\n".join(named[:40]) + "\n--- tail ---\n" + text[-tail:]
