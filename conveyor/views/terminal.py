"""Terminal Gantt chart of a timeline: rows are stages, columns are time slots.

Each column is one slot of ``slot`` time units. A forward shows its micro-batch
number on a plain field, a backward shows it on a ``=`` field (``-`` for I,
``~`` for W), a data-parallel all-reduce is ``#`` on its stage's row, and idle
slots (the bubble) are faint dots. With colour, cells
are coloured by micro-batch and backwards are drawn in the reverse style.
Charts wider than the terminal are folded into bands.
"""

from __future__ import annotations

import os
import shutil
import sys

from conveyor.schedule.ir import B, COMPUTE_KINDS, F, I, W
from conveyor.sim.timeline import Timeline

__all__ = ["render_gantt", "use_colour"]

_FILL = {F: " ", B: "=", I: "-", W: "~"}
# 256-colour palette, one hue per micro-batch (cycled); readable with black text.
_PALETTE = [117, 216, 151, 225, 229, 183, 159, 223, 194, 218]
_ALLREDUCE = "\033[30;48;5;250m"  # black on light grey: communication, not compute
_RESET = "\033[0m"
_FAINT = "\033[2m"


def use_colour(stream=None) -> bool:
    """Colour when writing to a terminal, unless NO_COLOR is set (or FORCE_COLOR)."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def _style(kind: str, mb: int) -> str:
    c = _PALETTE[mb % len(_PALETTE)]
    if kind == F:
        return f"\033[30;48;5;{c}m"        # black on the micro-batch colour
    return f"\033[1;4;38;5;{c};48;5;236m"  # micro-batch colour on dark grey, underlined


def _cells(timeline: Timeline, slot: float, n_slots: int, w: int, colour: bool):
    """Per stage, a list of n_slots (text, style) cells of width w."""
    rows = [[("·".rjust(w), _FAINT if colour else "") for _ in range(n_slots)]
            for _ in range(timeline.S)]
    t0 = timeline.t0
    for e in timeline.events:
        a = e.action
        if a.kind not in COMPUTE_KINDS:
            continue
        first = int(round((e.start - t0) / slot))
        last = max(first + 1, int(round((e.end - t0) / slot)))
        label = str(a.mb)
        fill = _FILL[a.kind]
        style = _style(a.kind, a.mb) if colour else ""
        for k in range(first, min(last, n_slots)):
            text = (label.rjust(w) if k == first and a.kind == F else
                    (fill + label).rjust(w, fill) if k == first else fill * w)
            rows[a.stage][k] = (text, style)
    for c in timeline.collectives:
        first = int(round((c.start - t0) / slot))
        last = max(first + 1, int(round((c.end - t0) / slot)))
        for k in range(first, min(last, n_slots)):
            rows[c.stage][k] = ("#" * w, _ALLREDUCE if colour else "")
    return rows


def render_gantt(timeline: Timeline, *, slot: float | None = None, colour: bool = False,
                 width: int | None = None) -> str:
    """Draw ``timeline`` as text. ``slot`` is the time per column (default: the
    shortest compute action); ``width`` the terminal width to fold at."""
    durations = [e.end - e.start for e in timeline.events
                 if e.action.kind in COMPUTE_KINDS and e.end > e.start]
    if not durations:
        return "(empty timeline)"
    slot = slot or min(durations)
    n_slots = max(1, int(round(timeline.step_time / slot)))
    w = len(str(timeline.M - 1)) + 1
    rows = _cells(timeline, slot, n_slots, w, colour)
    width = width or shutil.get_terminal_size((120, 24)).columns
    label = f"stage {timeline.S - 1}"
    per_band = max(4, (width - len(label) - 3) // w)
    out = []
    for lo in range(0, n_slots, per_band):
        hi = min(n_slots, lo + per_band)
        if n_slots > per_band:
            out.append(f"{'':{len(label)}}   slots {lo}..{hi - 1} of {n_slots}")
        for s, row in enumerate(rows):
            line = "".join(f"{style}{text}{_RESET}" if style else text
                           for text, style in row[lo:hi])
            out.append(f"{f'stage {s}':>{len(label)}} │{line}")
        out.append("")
    legend = (f"  one column = {slot:g} {timeline.unit}   "
              f"{'F: number' if not colour else 'F: solid'}   "
              f"B: =number={'' if not colour else ' (dark)'}   I: -number-   W: ~~   "
              f"bubble: ·" + ("   all-reduce: ##" if timeline.collectives else ""))
    out.append(legend)
    return "\n".join(out)
