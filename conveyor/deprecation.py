"""Renamed keywords: the old name keeps working for one release, with a
DeprecationWarning naming the new one (see conveyor/cli/names.py for the
table of canonical names). Torch-free."""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed", "REMOVED_IN"]

REMOVED_IN = "0.3"


def renamed(**old_to_new: str):
    """Decorator: accept each ``old=`` keyword as ``new=``, with a warning.

    Passing both raises TypeError naming the two, as Python does for a
    keyword given twice."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got {old}= and {new}=; {old}= is the "
                                    f"deprecated name of {new}=, pass only {new}=")
                warnings.warn(f"{fn.__qualname__}({old}=...) is deprecated and will be removed "
                              f"in {REMOVED_IN}; use {new}=", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return inner
    return wrap
