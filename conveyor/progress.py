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

__all__ = ["ProgressBar", "WeightedProgress", "progress_channel"]


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


class WeightedProgress(ProgressBar):
    """A bar over expected seconds of work, for long runs whose steps take
    very different times (``conveyor profile``): ``expect(s)`` adds work
    expected to take s seconds, ``advance(label, s)`` marks it done, so the
    bar moves in proportion to time. It shows the share done, the time so
    far, an ETA (the expected seconds left, scaled by how fast the expected
    work went so far) and the phase it is in (``phase(name)``)."""

    def __init__(self, *, title: str = "", stream: TextIO | None = None, width: int = 24):
        self.expected, self.phase_name, self._keys = 0.0, "", set()
        super().__init__(1, title=title, stream=stream, width=width)
        self.done = 0.0

    def expect(self, seconds: float, key: str | None = None) -> None:
        """Add ``seconds`` of expected work (an estimate: the ETA corrects it);
        work under a ``key`` already expected is not added twice."""
        if key is not None:
            if key in self._keys:
                return
            self._keys.add(key)
        self.expected += max(float(seconds), 0.0)

    def phase(self, name: str, label: str = "") -> None:
        self.phase_name = name
        self.show(label)

    def eta(self) -> float | None:
        """Seconds left, or None before any work is done."""
        if self.done <= 0 or self.expected <= 0:
            return None
        rate = (time.monotonic() - self.start) / self.done  # real seconds per expected one
        return max(self.expected - self.done, 0.0) * rate

    def line(self, label: str) -> str:
        share = min(self.done / self.expected, 1.0) if self.expected > 0 else 0.0
        filled = round(self.width * share)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        eta = self.eta()
        left = "eta    ?" if eta is None else f"eta {eta:4.0f}s"
        what = ": ".join(x for x in (self.phase_name, label) if x)
        return f"{self.title}[{bar}] {100 * share:3.0f}%  {elapsed:4.0f}s  {left}  {what}"

    def advance(self, label: str = "", n: float = 1.0) -> None:
        self.done = min(self.expected, self.done + n)
        self.show(label)


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
