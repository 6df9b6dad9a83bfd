"""Progress for long runs: a one-line bar, and a channel from rank processes.

No dependency and no torch. On a terminal the bar redraws in place; otherwise
(logs, CI) it prints one line per update so the output stays readable.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

__all__ = ["ProgressBar", "progress_channel"]


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
        self._label = ""
        self.show("starting")

    def line(self, label: str) -> str:
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        return f"{self.title}[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"

    def show(self, label: str) -> None:
        self._label = label
        text = self.line(label)
        if self.tty:
            pad = " " * max(0, self._last_len - len(text))
            self.stream.write("\r" + text + pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def write(self, text: str) -> None:
        """Print a line of text above the bar (the bar is redrawn below it)."""
        if self.tty:
            self.stream.write("\r" + " " * self._last_len + "\r" + text + "\n")
            self._last_len = 0
            self.show(self._label)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def advance(self, label: str = "", n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.show(label)

    def close(self) -> None:
        """Erase the bar from a terminal (a log keeps its lines)."""
        if self.tty:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()


@contextmanager
def progress_channel(on_progress: Callable[[Any], None] | None) -> Iterator[Any]:
    """A queue for the ranks of ``conveyor.runtime.launch`` to report progress on.

    Pass what this yields in the launch's ``args``; every message a rank
    ``put``s on it is handed, in order, to ``on_progress`` in this process while
    the launch runs (from a helper thread). Yields None when ``on_progress`` is
    None, so ranks can skip reporting. The queue writes synchronously, so a
    rank that exits right after ``put`` loses nothing.
    """
    if on_progress is None:
        yield None
        return
    import multiprocessing as mp

    channel = mp.get_context("spawn").SimpleQueue()
    done = _Done()

    def pump() -> None:
        while True:
            msg = channel.get()
            if isinstance(msg, _Done):
                return
            on_progress(msg)

    thread = threading.Thread(target=pump, name="conveyor-progress", daemon=True)
    thread.start()
    try:
        yield channel
    finally:
        channel.put(done)
        thread.join(timeout=5)
        channel.close()


class _Done:
    """The end-of-run marker on a progress channel."""
