"""The explorer page: one self-contained HTML file (inline CSS, JS and data).

``render_page`` fills ``assets/explorer.html`` with the stylesheet, the
scripts (``replay.js``, the mirror of the engine; ``explorer.js``, drawing and
controls) and the data; nothing is fetched from anywhere when the page opens, so it works
from ``file://`` on a machine with no network. ``write_page`` writes it
atomically: a failed build never leaves a partial page behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conveyor.views.data import FORMAT
from conveyor.views.files import atomic_write

__all__ = ["render_page", "write_page", "asset_text"]

_ASSETS = Path(__file__).resolve().parent / "assets"
# Drawing (canvas and SVG), the measured views, then the controls that use them.
_SCRIPTS = ("draw.js", "measured.js", "explorer.js")
_SLOT = re.compile(r"/\*CONVEYOR_(CSS|REPLAY_JS|JS|DATA)\*/")


def asset_text(name: str) -> str:
    """The text of ``conveyor/views/assets/<name>``."""
    return (_ASSETS / name).read_text(encoding="utf-8")


def _script_json(obj) -> str:
    # "<" only occurs inside JSON strings, where \u003c reads back the same; this
    # keeps a "</script>" in a file name or summary from ending the block.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_page(data: dict, *, mode: str = "embedded", initial: dict | None = None,
                measured: dict | None = None, sweep: dict | None = None) -> str:
    """The page's HTML for ``data`` (from ``build_data``, or the schedule list
    alone in ``mode="serve"``).

    initial:  the configuration shown first, keys schedule, P, M, view ("fwd"
              or "step") and ratio (one of ``data["ratios"]``).
    measured: a ``measured_section`` to draw above the explorer.
    sweep:    a ``sweep_section``: one measured chart per M, above the explorer.
    """
    if mode not in ("embedded", "serve"):
        raise ValueError(f"mode={mode!r}; use 'embedded' or 'serve'")
    payload = dict(data, format=FORMAT, mode=mode, initial=initial or {}, measured=measured,
                   sweep=sweep)
    parts = {"CSS": asset_text("explorer.css"), "REPLAY_JS": asset_text("replay.js"),
             "JS": "\n".join(asset_text(n) for n in _SCRIPTS), "DATA": _script_json(payload)}
    # One pass, so text inside the inserted parts is never taken for a slot.
    return _SLOT.sub(lambda m: parts[m.group(1)], asset_text("explorer.html"))


def write_page(path: str | Path, html: str) -> Path:
    """Write ``html`` to ``path`` through a temporary file in the same folder,
    renamed into place only once complete."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
