"""Argument types and checks shared by the sub-commands.

Each type raises ArgumentTypeError with the value and the fix, which the CLI
prints as one line (exit code 2). The output checks run before any work, so a
command that cannot write its result fails at once and writes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from conveyor.checks import check_int
from conveyor.errors import ConveyorError

__all__ = ["int_at_least", "int_list", "milliseconds", "port", "positive_float", "bytes_arg",
           "byte_sizes", "check_outputs", "check_output_dir"]

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 10 ** 3, "kib": 2 ** 10, "m": 2 ** 20,
          "mb": 10 ** 6, "mib": 2 ** 20, "g": 2 ** 30, "gb": 10 ** 9, "gib": 2 ** 30,
          "t": 2 ** 40, "tb": 10 ** 12, "tib": 2 ** 40}


class OutputError(ConveyorError):
    """An output path that cannot be written."""


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``lo`` (and, if given, no
    larger than ``hi``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        check_int(value, "the value", at_least=lo, error=argparse.ArgumentTypeError)
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{value} is too large; use at most {hi}")
        return value

    return parse


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``2,4,8``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 2,4") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1, e.g. 2,4")
    return values


def milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"{text!r} ms: give 0 to 60000 milliseconds")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535 (0: any free port)")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def _size(text: str) -> float | None:
    """``16GiB``, ``512MiB``, ``2e9`` as a finite number of bytes >= 0; None if not."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    try:
        value = float(m.group(1)) * _UNITS[unit] if m else None
    except (ValueError, KeyError):
        return None
    return value if value is not None and math.isfinite(value) else None


def bytes_arg(text: str) -> float:
    """``16GiB``, ``512MiB``, ``2e9``: a positive number of bytes."""
    value = _size(text)
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; write e.g. 16GiB, "
                                         f"512MiB or 2e9 (bytes)")
    return value


def byte_sizes(text: str) -> float | list[float]:
    """One size or a comma-separated list of sizes >= 0, e.g. ``1.5GiB`` or ``2e8,2e8,4e8``."""
    values = [_size(x) for x in text.split(",")]
    if not values or any(v is None for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size or a comma-separated list of sizes; write e.g. 1.5GiB, "
            f"2e9 or 512MiB,1GiB (bytes)")
    return values[0] if len(values) == 1 else values


def _probe(folder: Path, shown: str) -> None:
    """Create and remove a file in ``folder``: the one sure test that a file
    can be written there (permissions, read-only mounts, /proc, full disks)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".conveyor-probe.", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write {shown}: folder {str(folder)!r} is not writable "
                          f"({e.strerror}); choose another output path") from None
    os.close(fd)
    os.unlink(tmp)


def check_outputs(paths: Iterable[str], *, option: str = "-o") -> None:
    """Raise OutputError unless every path names a file that can be written:
    not empty, not a folder, in an existing, writable folder."""
    for text in paths:
        shown = f"{option} {text!r}"
        if not str(text).strip():
            raise OutputError(f"{shown} is empty; give a file name")
        path = Path(text)
        if path.is_dir():
            raise OutputError(f"cannot write {shown}: it is a folder; give a file name")
        folder = path.parent
        if not folder.is_dir():
            raise OutputError(f"cannot write {shown}: folder {str(folder)!r} does not exist; "
                              f"create it or choose another output path")
        _probe(folder, shown)


def check_output_dir(text: str, *, option: str = "--out") -> None:
    """Raise OutputError unless ``text`` is, or can be made, a writable folder."""
    shown = f"{option} {text!r}"
    if not str(text).strip():
        raise OutputError(f"{shown} is empty; give a folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write into {shown}: it is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {shown}: {str(existing)!r} is a file")
    _probe(existing, shown)
