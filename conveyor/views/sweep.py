"""A measured M sweep (``conveyor demo`` writes one) as page data.

The directory holds one measured timeline per M and ``sweep.json``::

    {"P": 4, "schedule": "gpipe", "batch": 32, "device_time": {...},
     "rows": [{"M": 1, "measured": 0.75, "simulated": 0.75, "formula": 0.75,
               "step_s": 0.3, "timeline": "M01.json"}, ...]}

``sweep_section`` reads every row's timeline, checks that it is a run of the
named schedule at that P and M, and returns one ``measured_section`` per M
(its measured events and bubble, and its simulation with the measured costs)
plus the sweep's own numbers, for the page's small multiples.
"""

from __future__ import annotations

from pathlib import Path

from conveyor.errors import TimelineError
from conveyor.sim import load_timeline
from conveyor.views.measured import measured_section
from conveyor.userfiles import read_json

__all__ = ["SWEEP_FILE", "is_sweep", "sweep_path", "sweep_section"]

SWEEP_FILE = "sweep.json"


def sweep_path(path: str | Path) -> Path:
    """``path`` itself when it is a sweep.json, else ``path/sweep.json``."""
    path = Path(path)
    return path if path.name == SWEEP_FILE or path.is_file() else path / SWEEP_FILE


def is_sweep(path: str | Path) -> bool:
    """True for a sweep directory or its sweep.json (not for a single timeline)."""
    path = Path(path)
    return path.is_dir() or path.name == SWEEP_FILE


def _bad(where: Path, why: str) -> TimelineError:
    return TimelineError(f"{str(where)!r} is not a measured sweep: {why}; pass the folder "
                         f"`conveyor demo` wrote (e.g. runs/demo/sweep) or one timeline file")


def sweep_section(path: str | Path) -> dict:
    """Page data for the sweep at ``path`` (its folder or its sweep.json).

    Returns {"file", "P", "schedule", "batch", "device_time", "rows", "runs"}
    with one ``measured_section`` per row in ``runs``, in increasing M.
    Raises TimelineError when sweep.json is missing or malformed, or when a
    row's timeline is missing or not a run of the sweep's schedule at its P, M.
    """
    path = sweep_path(path)
    if not path.exists():
        raise _bad(path, f"{SWEEP_FILE} is missing")
    try:
        doc = read_json(path, what="sweep", error=TimelineError)
    except TimelineError as e:
        raise _bad(path, str(e)) from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise _bad(path, "it has no \"rows\" list")
    runs, clean = [], []
    for row in sorted(rows, key=lambda r: r.get("M", 0) if isinstance(r, dict) else 0):
        if not isinstance(row, dict) or not isinstance(row.get("timeline"), str) \
                or not isinstance(row.get("M"), int):
            raise _bad(path, f"row {row!r} lacks an integer \"M\" or a \"timeline\" file name")
        tl_path = path.parent / row["timeline"]
        if not tl_path.exists():
            raise _bad(path, f"row M={row['M']} names {row['timeline']!r}, which does not exist")
        tl = load_timeline(tl_path)
        if doc.get("device_time"):
            tl.meta.setdefault("device_time", doc["device_time"])
        runs.append(measured_section(tl, source=tl_path, schedule=doc.get("schedule"),
                                     P=doc.get("P"), M=row["M"]))
        clean.append({k: row[k] for k in ("M", "measured", "simulated", "formula", "step_s")
                      if isinstance(row.get(k), (int, float))})
    return {"file": f"{path.parent.name}/{path.name}", "P": runs[0]["P"],
            "schedule": runs[0]["schedule"], "batch": doc.get("batch"),
            "device_time": doc.get("device_time"), "rows": clean, "runs": runs}
