"""A one-line progress bar on stderr (no dependency, no torch).

On a terminal it redraws in place; otherwise (logs, CI) it prints one line
per update so the output stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``total`` units of work; call ``advance(label)`` as each one finishes."""

    def __init__(self, total: int, *, title: str = "", stream: TextIO | None = None,
                 width: int = 24):
        self.total = max(total, 1)
        self.done = 0
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_len = 0
        self.show("starting")

    def line(self, label: str) -> str:
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        return f"{self.title}[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"

    def show(self, label: str) -> None:
        text = self.line(label)
        if self.tty:
            pad = " " * max(0, self._last_len - len(text))
            self.stream.write("\r" + text + pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def advance(self, label: str = "", n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.show(label)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
