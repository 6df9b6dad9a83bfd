"""Argument types shared by the sub-commands: each raises ArgumentTypeError with
the value and the fix, which the CLI prints as one line (exit code 2)."""

from __future__ import annotations

import argparse
from typing import Callable

from conveyor.checks import check_int

__all__ = ["int_at_least"]


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        return check_int(value, "the value", at_least=lo, error=argparse.ArgumentTypeError)

    return parse
