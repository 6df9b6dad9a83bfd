"""Text grid of a schedule (ranks by steps), with cells that can be marked.

Used in error messages ("fail with a picture"). Wide schedules show only the
steps near the marked cells; tall ones only the first, last and marked ranks.
"""

from __future__ import annotations

from typing import Iterable

from conveyor.schedule.ir import Schedule

__all__ = ["render_grid"]


def _shown(n: int, centres: list[int], window: int) -> list[int | None]:
    """Indices to show, with None where a run of indices is left out."""
    if n <= 2 * window + 1 or not centres:
        keep = set(range(min(n, 2 * window + 1)))
    else:
        keep = {i for c in centres for i in range(c - window, c + window + 1) if 0 <= i < n}
    out: list[int | None] = []
    for i in sorted(keep):
        if out and out[-1] is not None and i != out[-1] + 1 or (not out and i > 0):
            out.append(None)
        out.append(i)
    if out and out[-1] is not None and out[-1] < n - 1:
        out.append(None)
    return out


def render_grid(schedule: Schedule, marks: Iterable[tuple[int, int]] = (), *,
                window: int = 6, max_ranks: int = 16) -> str:
    """Rows are ranks, columns are steps (list positions). Each (rank, step) in
    ``marks`` is drawn as ``>cell<`` and underlined with ``^``."""
    marks = set(marks)
    rows = schedule.text_rows()
    n_steps = max((len(row) for row in rows), default=0)
    cols = _shown(n_steps, sorted({s for _, s in marks}), window)
    marked_ranks = {r for r, _ in marks}
    if len(rows) > max_ranks:
        ranks = _shown(len(rows), sorted(marked_ranks | {0, len(rows) - 1}), 1)
    else:
        ranks = list(range(len(rows)))
    width = max((len(c) for row in rows for c in row), default=2) + 3
    label = len(f"rank {len(rows) - 1}")
    head = "".join(f"{'...' if c is None else c:<{width}}" for c in cols).rstrip()
    out = [f"{'step':>{label}}  {head}"]
    if None in cols:
        out[0] += f"   (of steps 0..{n_steps - 1})"
    for r in ranks:
        if r is None:
            out.append(f"{'...':>{label}}")
            continue
        cells, under = [], []
        for step in cols:
            text = "..." if step is None else (rows[r][step] if step < len(rows[r]) else "")
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
