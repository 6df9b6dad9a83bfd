"""What the shared-memory transport (``shm``) asks of the operating system:
whether this machine can run it, a futex to sleep on and to wake a peer,
whether a peer process still runs, and the segment file, reserved up front."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["check_platform", "futex_wait", "futex_wake", "alive", "boot_id", "create"]

_SYS_FUTEX = 202            # x86-64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


def check_platform() -> str | None:
    """Why this machine cannot use the transport, or None if it can."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"it needs Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
    if not os.path.isdir("/dev/shm"):
        return "it needs /dev/shm, which this machine does not have"
    return None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAIT),
                  ctypes.c_uint(expected), ctypes.byref(ts), ctypes.c_void_p(0), ctypes.c_int(0))


def futex_wake(addr: int) -> None:
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAKE),
                  ctypes.c_int(1 << 30), ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_int(0))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def create(path: str, size: int) -> str | None:
    """Make the segment, its memory reserved now (tmpfs would otherwise fail
    later, with SIGBUS, on the first write past its limit); why not, or None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return f"transport='shm' cannot create {path} ({e.strerror}); use transport='dist'"
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.unlink(path)
        st = os.statvfs("/dev/shm")
        return (f"transport='shm' needs {size / 2**20:.1f} MiB in /dev/shm, which has "
                f"{st.f_bavail * st.f_frsize / 2**20:.1f} MiB free ({e.strerror}); enlarge it "
                f"(docker run --shm-size=...) or use transport='dist'")
    finally:
        os.close(fd)
    return None
