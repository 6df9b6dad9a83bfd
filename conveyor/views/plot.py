"""Static figures with matplotlib: Gantt charts of timelines, and bubble vs M.

matplotlib is imported inside the functions, and only its object-oriented API
with the Agg renderer is used (no pyplot), so importing this module is free and
never changes the caller's backend. Colours follow the explorer page: one hue
per micro-batch, F solid, B light with a border, I dashed, W hatched; a
data-parallel all-reduce is a grey bar marked "all-reduce" on its rank's row.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

from conveyor.schedule import B, F, I, W, build_schedule
from conveyor.sim import CostModel, formula_bubble, simulate
from conveyor.sim.timeline import Timeline
from conveyor.views.errors import ViewError
from conveyor.views.files import atomic_write
from conveyor.views.measured import match_schedule
from conveyor.views.metrics import exact_bubble, fraction_text

__all__ = ["FORMATS", "figure_format", "gantt_figure", "bubble_vs_m_figure", "save_figure"]

FORMATS = ("png", "svg")


def _colour(mb: int, light: float) -> tuple[float, float, float]:
    return colorsys.hls_to_rgb(((mb * 137.508) % 360) / 360, light, 0.62)


def _time_scale(tl: Timeline) -> tuple[float, str]:
    return (1000.0, "ms") if tl.unit == "s" else (1.0, tl.unit + "s")


def _draw_gantt(ax, tl: Timeline, T: float, title: str) -> None:
    scale, unit = _time_scale(tl)
    t0 = tl.t0
    v = max(1, tl.S // tl.P)
    px_per_unit = ax.figure.get_figwidth() * ax.figure.dpi * 0.85 / max(T * scale, 1e-12)
    for r in range(tl.P):
        gaps = [((a - t0) * scale, (b - a) * scale) for a, b in tl.idle_intervals(r)]
        ax.broken_barh(gaps, (r - 0.4, 0.8), facecolors=(0.54, 0.58, 0.64, 0.16))
        by_kind: dict[str, list] = {}
        for e in tl.rank_events(r):
            by_kind.setdefault(e.action.kind, []).append(e)
        for kind, events in by_kind.items():
            # One collection per (rank, kind): thousands of bars stay fast.
            xs = [((e.start - t0) * scale, e.duration * scale) for e in events]
            strong = [_colour(e.action.mb, 0.47) for e in events]
            light = [_colour(e.action.mb, 0.86) for e in events]
            style = {F: dict(facecolors=strong, edgecolors="white"),
                     B: dict(facecolors=light, edgecolors=strong),
                     I: dict(facecolors=light, edgecolors=strong, linestyle="--"),
                     W: dict(facecolors="white", edgecolors=strong, hatch="////")}[kind]
            ax.broken_barh(xs, (r - 0.4, 0.8), linewidth=0.8, **style)
            for e, (x, w) in zip(events, xs):
                if w * px_per_unit >= 14:
                    ax.text(x + w / 2, r, str(e.action.mb), ha="center", va="center",
                            fontsize=6.5, color="white" if kind == F else "black")
    _draw_collectives(ax, tl, scale, px_per_unit)
    labels = [f"rank {r}" if v > 1 else f"stage {r}" for r in range(tl.P)]
    ax.set_yticks(range(tl.P), labels)
    ax.set_ylim(tl.P - 0.5, -0.5)
    ax.set_xlim(0, T * scale)
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title, fontsize=10, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_collectives(ax, tl: Timeline, scale: float, px_per_unit: float) -> None:
    """The all-reduces, one collection per rank, under the compute bars: what
    shows is the part that runs in the rank's idle time."""
    if not tl.collectives:
        return
    t0 = tl.t0
    for r in range(tl.P):
        xs = [((c.start - t0) * scale, (c.end - c.start) * scale)
              for c in tl.collectives if c.rank == r]
        if not xs:
            continue
        ax.broken_barh(xs, (r - 0.4, 0.8), facecolors=(0.42, 0.44, 0.48, 0.75),
                       edgecolors=(0.25, 0.26, 0.3), linewidth=0.8, hatch="xx", zorder=0.5)
        for x, w in xs:
            if w * px_per_unit >= 60:
                ax.text(x + w - 4 / px_per_unit, r, "all-reduce", ha="right", va="center",
                        fontsize=6.5, color="white", zorder=0.6)


def _describe(tl: Timeline) -> str:
    bub = fraction_text(exact_bubble(tl), tl.bubble_overall)
    view = "forward only" if tl.forward_only else "training step"
    dp = tl.meta.get("allreduce", {}).get("dp")
    view += f", dp={dp} (all-reduce in grey)" if dp else ""
    return f"{tl.schedule}, P={tl.P}, M={tl.M}, {view}, {tl.source}: bubble {bub}"


def gantt_figure(timelines: Timeline | Sequence[Timeline], *, titles: Sequence[str] = ()):
    """A matplotlib Figure with one Gantt chart per timeline, stacked on one
    time scale (e.g. measured above simulated). Rows are ranks, time runs to
    the right, idle time is faintly shaded. Raises ViewError when there is no
    timeline or their time units differ."""
    from matplotlib.figure import Figure

    tls = [timelines] if isinstance(timelines, Timeline) else list(timelines)
    if not tls:
        raise ViewError("no timeline to draw; give at least one")
    units = sorted({tl.unit for tl in tls})
    if len(units) > 1:
        raise ViewError(f"cannot stack timelines with different time units ({', '.join(units)}) "
                        f"on one time scale; simulate with unit={tls[0].unit!r}")
    heights = [0.34 * tl.P + 0.9 for tl in tls]
    fig = Figure(figsize=(10, sum(heights) + 0.2), dpi=110, layout="constrained")
    axes = fig.subplots(len(tls), 1, squeeze=False, height_ratios=heights)[:, 0]
    T = max(tl.step_time for tl in tls)
    for i, (ax, tl) in enumerate(zip(axes, tls)):
        _draw_gantt(ax, tl, T, titles[i] if i < len(titles) else _describe(tl))
    return fig


def bubble_vs_m_figure(name: str, P: int, *, M_max: int = 64, ratio: float = 2.0,
                       measured: Sequence[Timeline] = ()):
    """Bubble fraction against M for schedule ``name`` at ``P``: the closed-form
    curve (where the schedule has one), simulated points at backward/forward
    cost ``ratio``, and one point per ``measured`` timeline. Raises
    TimelineError when a measured timeline is not a run of ``name`` at ``P``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if isinstance(M_max, bool) or not isinstance(M_max, int) or not 1 <= M_max <= 1024:
        raise ViewError(f"M_max={M_max!r} is out of range; use 1..1024")
    for tl in measured:
        match_schedule(tl, source=f"measured timeline (M={tl.M})", schedule=name, P=P)
    Ms = list(range(1, M_max + 1))
    costs = CostModel(forward=1.0, backward=ratio)
    sim = [simulate(build_schedule(name, P, M), costs).bubble_overall for M in Ms]
    fig = Figure(figsize=(6.4, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    formula = [formula_bubble(name, P, M) for M in Ms]
    if all(f is not None for f in formula):
        ax.plot(Ms, [float(f) for f in formula], color="#3b5b92", linewidth=1.6,
                label="formula", zorder=2)
    ax.plot(Ms, sim, "o", markersize=3.5, color="#e08a2c", label=f"simulated (B = {ratio:g}F)",
            zorder=3)
    if measured:
        ax.plot([tl.M for tl in measured], [tl.bubble_overall for tl in measured], "X",
                markersize=8, color="#b3202a", label="measured", zorder=4)
    ax.set_xscale("log", base=2)
    ticks = [m for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if m <= M_max]
    ax.set_xticks(ticks, [str(m) for m in ticks])
    ax.minorticks_off()
    ax.set_xlabel("micro-batches M")
    ax.set_ylabel("bubble")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    # The top covers every series drawn, measured points included (a measured
    # bubble is often above the simulated one, e.g. on shared cores).
    shown = sim + [tl.bubble_overall for tl in measured] + [float(f) for f in formula if f is not None]
    ax.set_ylim(0, min(1.02, max(shown + [0.05]) * 1.08))
    ax.grid(alpha=0.3)
    ax.set_title(f"{name}, P = {P}: the bubble shrinks as M grows", fontsize=10, loc="left")
    ax.legend(frameon=False)
    return fig


def figure_format(path: str | Path) -> str:
    """"png" or "svg" from the suffix of ``path``; ViewError for anything else."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ViewError(f"cannot write {str(path)!r}: unknown figure format {fmt or '(none)'!r}; "
                        f"end the name with .png or .svg")
    return fmt


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG or SVG, chosen by the file suffix, atomically.
    Raises ViewError for any other suffix."""
    fmt = figure_format(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))
