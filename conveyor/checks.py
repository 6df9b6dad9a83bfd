"""The one positive-integer check, shared by every layer (no torch).

Counts (P, M, layers, stages, repeats, widths) arrive from Python callers, JSON
files and the command line alike; each layer raises its own typed error, with
the same wording.
"""

from __future__ import annotations

from conveyor.errors import ConveyorError

__all__ = ["check_int"]


def check_int(value, name: str, *, at_least: int = 1, what: str = "",
              error: type[Exception] = ConveyorError) -> int:
    """Return ``value`` when it is an int (not a bool) of at least ``at_least``.

    Otherwise raise ``error`` (any exception class taking a message: a
    ConveyorError subclass, or argparse.ArgumentTypeError) saying
    "{name} must be a positive integer ({what}), got {value!r}"; ``what`` says
    what the number counts and may be empty.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        want = "a positive integer" if at_least == 1 else f"an integer >= {at_least}"
        about = f" ({what})" if what else ""
        raise error(f"{name} must be {want}{about}, got {value!r}")
    return value
