"""The explorer page: one self-contained HTML file (inline CSS, JS and data).

``render_page`` fills ``assets/explorer.html`` with the stylesheet, the
scripts (``replay.js``, the mirror of the engine; ``solver.js``, zb-auto's
solver; ``costs.js``, what each stage costs; the drawing, the measured views,
the explanations and the controls) and the data; nothing is fetched from anywhere when the page opens, so it works
from ``file://`` on a machine with no network. ``write_page`` writes it
atomically: a failed build never leaves a partial page behind.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

from conveyor.views.data import FORMAT
from conveyor.views.files import atomic_write

__all__ = ["render_page", "write_page", "asset_text", "page_data"]

_ASSETS = Path(__file__).resolve().parent / "assets"
# Painters and charts, costs, the zb-auto solver, the measured views and the
# explanations, then the controls that use them all, and the tests' entry points.
_SCRIPTS = ("draw.js", "charts.js", "costs.js", "solver.js", "curve.js", "measured.js", "explain.js",
            "explorer.js", "hooks.js")
_SLOT = re.compile(r"/\*CONVEYOR_(CSS|REPLAY_JS|JS|DATA)\*/")
_DATA_BLOCK = re.compile(r'<script type="application/octet-stream" id="conveyor-data"[^>]*>([^<]*)</script>')


def asset_text(name: str) -> str:
    """The text of ``conveyor/views/assets/<name>``."""
    return (_ASSETS / name).read_text(encoding="utf-8")


def _packed(obj) -> str:
    """The page data as base64 of gzipped JSON. The orders of many schedules
    repeat a lot (neighbouring ranks differ by a count or two), so gzip keeps
    ten schedules' worth well under the 3 MB budget; base64 has no "<", so no
    file name or summary can end the script block."""
    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def page_data(html: str) -> dict:
    """The data embedded in a page ``render_page`` wrote (for tests and tools).
    Raises ValueError when ``html`` holds no such data."""
    m = _DATA_BLOCK.search(html)
    if m is None:
        raise ValueError("no conveyor data block in this page")
    return json.loads(gzip.decompress(base64.b64decode(m.group(1))))


def render_page(data: dict, *, mode: str = "embedded", initial: dict | None = None,
                measured: dict | None = None, sweep: dict | None = None,
                steps: dict | None = None) -> str:
    """The page's HTML for ``data`` (from ``build_data``, or the schedule list
    alone in ``mode="serve"``).

    initial:  the configuration shown first, keys schedule, P, M, view ("fwd"
              or "step") and ratio (one of ``data["ratios"]``).
    measured: a ``measured_section`` to draw above the explorer.
    sweep:    a ``sweep_section``: one measured chart per M, above the explorer.
    steps:    a ``steps_section``: several measured steps of one run, their
              spread per rank, one step's chart above the explorer.
    """
    if mode not in ("embedded", "serve"):
        raise ValueError(f"mode={mode!r}; use 'embedded' or 'serve'")
    payload = dict(data, format=FORMAT, mode=mode, initial=initial or {}, measured=measured,
                   sweep=sweep, steps=steps)
    parts = {"CSS": asset_text("explorer.css"), "REPLAY_JS": asset_text("replay.js"),
             "JS": "\n".join(asset_text(n) for n in _SCRIPTS), "DATA": _packed(payload)}
    # One pass, so text inside the inserted parts is never taken for a slot.
    return _SLOT.sub(lambda m: parts[m.group(1)], asset_text("explorer.html"))


def write_page(path: str | Path, html: str) -> Path:
    """Write ``html`` to ``path`` through a temporary file in the same folder,
    renamed into place only once complete."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
