"""Argument types shared by the sub-commands: each raises ArgumentTypeError with
the value and the fix, which the CLI prints as one line (exit code 2)."""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["int_at_least"]


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is too small; use {lo} or more")
        return value

    return parse
