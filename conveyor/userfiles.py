"""Reading the files a user names: the one way conveyor opens them.

Every file a user hands conveyor (a schedule, timeline, plan, profile, sweep,
a checkpoint's manifest) is read here, so the bounds hold for all of them:

* only a regular file is read. A FIFO, a character device (``/dev/zero``,
  ``/dev/urandom``), a socket or a folder is refused at once, before a byte is
  read: the file is opened with O_NONBLOCK, so opening a FIFO with no writer
  returns instead of waiting for one, and its type is checked on the open
  descriptor (no race with a rename between a check and the open);
* the size is checked on that descriptor before reading, and the read itself
  stops one byte past the bound, for files whose size the kernel does not
  know ahead (``/proc``) or that grow while being read;
* JSON that nests deeper than Python's parser can follow (``[[[[...``, 10^5
  deep) is refused by name instead of ending in RecursionError; conveyor's own
  files nest a handful of levels.

Each function takes the error type to raise (ScheduleError, TimelineError,
PlanError, ...) so the caller's own error names the file, the cause and the
fix. No torch: the core uses it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from conveyor.limits import MAX_FILE_BYTES

__all__ = ["read_bytes", "read_text", "read_json", "parse_json"]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_CHUNK = 1 << 20


def _error(error):
    if error is None:
        from conveyor.errors import ConveyorError as error
    return error


def read_bytes(path, *, what: str, error=None, limit: int = MAX_FILE_BYTES,
               fix: str = "") -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises ``error`` (default ConveyorError) naming ``what`` and the path when
    the file is missing or unreadable, is not a regular file, or is larger
    than ``limit``; ``fix`` ends each message (what to pass instead)."""
    error = _error(error)
    shown = f"{what} {str(path)!r}"
    tail = f"; {fix}" if fix else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        kind = _kind(path)  # a socket cannot be opened at all: say what it is
        if kind:
            raise error(f"{shown} is {kind}, not a file; conveyor reads only regular files"
                        f"{tail or '; give the path of a file'}") from None
        raise error(f"cannot read {shown}: {e.strerror or e}{tail}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise error(f"{shown} is {kind}, not a file; conveyor reads only regular files"
                        f"{tail or '; give the path of a file'}")
        if st.st_size > limit:
            raise error(f"{shown} is {_size(st.st_size)}, beyond the bound of {_size(limit)} "
                        f"for a file conveyor reads whole{tail}")
        parts, n = [], 0
        while n <= limit:
            try:
                chunk = os.read(fd, min(_CHUNK, limit + 1 - n))
            except OSError as e:
                raise error(f"cannot read {shown}: {e.strerror or e}{tail}") from None
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
        if n > limit:  # grew while being read, or a size the kernel did not report
            raise error(f"{shown} holds more than the bound of {_size(limit)} for a file "
                        f"conveyor reads whole{tail}")
        return b"".join(parts)
    finally:
        os.close(fd)


def read_text(path, *, what: str, error=None, limit: int = MAX_FILE_BYTES,
              fix: str = "") -> str:
    """``read_bytes`` decoded as UTF-8; bytes that are not UTF-8 raise
    ``error`` naming the file and the offset."""
    raw = read_bytes(path, what=what, error=error, limit=limit, fix=fix)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(error)(f"{what} {str(path)!r} is not text (byte {e.start} is not UTF-8)"
                            f"{'; ' + fix if fix else ''}") from None


def parse_json(text: str | bytes, *, source: str, error=None, fix: str = "") -> Any:
    """``json.loads(text)``; broken JSON and JSON nested too deep for the
    parser raise ``error`` naming ``source``, the cause and ``fix``."""
    error = _error(error)
    tail = f"; {fix}" if fix else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source} is not valid JSON ({e.msg} at line {e.lineno} column "
                    f"{e.colno}){tail}") from None
    except UnicodeDecodeError as e:
        raise error(f"{source} is not text (byte {e.start} is not UTF-8){tail}") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{source} is not valid JSON ({e}){tail}") from None
    except RecursionError:
        raise error(f"{source} nests JSON deeper than the parser follows (about "
                    f"{_depth_hint()} levels); conveyor's files nest a few levels, so this is "
                    f"not one of them{tail}") from None


def read_json(path, *, what: str, error=None, limit: int = MAX_FILE_BYTES,
              fix: str = "") -> Any:
    """The JSON value in the regular file at ``path`` (bounded as
    ``read_bytes``); raises ``error`` naming the file for every failure."""
    raw = read_bytes(path, what=what, error=error, limit=limit, fix=fix)
    return parse_json(raw, source=f"{what} {str(path)!r}", error=error, fix=fix)


def _kind(path) -> str | None:
    """What ``path`` is when it exists and is not a regular file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((k for test, k in _KINDS if test(mode)), "not a regular file")


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n} bytes"


def _depth_hint() -> int:
    import sys

    return sys.getrecursionlimit()
