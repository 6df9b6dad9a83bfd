"""Text grid of a schedule (ranks by steps), with cells that can be marked.

Used in error messages ("fail with a picture") and by ``conveyor show``-style
output. Wide schedules are cut to a window around the marked cells.
"""

from __future__ import annotations

from typing import Iterable

from conveyor.schedule.ir import Schedule

__all__ = ["render_grid"]


def render_grid(schedule: Schedule, marks: Iterable[tuple[int, int]] = (), *,
                window: int = 8, max_ranks: int = 16) -> str:
    """Rows are ranks, columns are steps (list positions). Each (rank, step) in
    ``marks`` is drawn as ``>cell<`` and underlined with ``^``. When the schedule
    is wider than 2*window+1 steps, only the steps near the marks are shown."""
    marks = sorted(set(marks))
    rows = schedule.text_rows()
    width = max((len(c) for row in rows for c in row), default=2) + 2
    n_steps = max((len(row) for row in rows), default=0)
    if marks and n_steps > 2 * window + 1:
        lo = max(0, min(s for _, s in marks) - window)
        hi = min(n_steps, max(s for _, s in marks) + window + 1)
    else:
        lo, hi = 0, min(n_steps, 2 * window + 1) if n_steps > 4 * window else n_steps
    marked_ranks = {r for r, _ in marks}
    shown = list(range(len(rows)))
    if len(shown) > max_ranks:
        keep = set(range(4)) | set(range(len(rows) - 4, len(rows))) | marked_ranks
        shown = sorted(keep)
    label = max(len(f"rank {len(rows) - 1}"), 4)
    head = " " * (label + 1) + "".join(f"{s:<{width}}" for s in range(lo, hi))
    out = [f"{'step':>{label}} " + head[label + 1:].rstrip()]
    if lo > 0 or hi < n_steps:
        out[0] += f"   (steps {lo}..{hi - 1} of 0..{n_steps - 1})"
    prev = -1
    for r in shown:
        if r != prev + 1:
            out.append(f"{'...':>{label}}")
        prev = r
        cells, under = [], []
        for step in range(lo, hi):
            text = rows[r][step] if step < len(rows[r]) else ""
            if (r, step) in marks:
                cells.append(f">{text}<".ljust(width))
                under.append(("^" * (len(text) + 2)).ljust(width))
            else:
                cells.append(f" {text}".ljust(width))
                under.append(" " * width)
        out.append(f"{f'rank {r}':>{label}} " + "".join(cells).rstrip())
        if r in marked_ranks:
            out.append(" " * (label + 1) + "".join(under).rstrip())
    return "\n".join(out)
