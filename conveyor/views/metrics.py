"""Small metric helpers shared by the page, the figures and the CLI.

They read a Timeline and never re-derive a schedule: everything comes from the
events the simulator or the runtime recorded.
"""

from __future__ import annotations

import math
from fractions import Fraction

from conveyor.schedule.ir import B, F, W
from conveyor.sim.timeline import Timeline

__all__ = ["MAX_DEN", "exact_bubble", "bubble_code", "fraction_text", "percent_text", "stage_peaks"]

# Fractions with larger denominators are shown as a percentage only: a
# "1234/56789" is no easier to read than "2.2%".
MAX_DEN = 100_000


def exact_bubble(tl: Timeline) -> Fraction | None:
    """The overall bubble as an exact fraction, or None when it is not a small one.

    ``math.fsum`` rounds the busy time once, so with slot-like costs (small
    binary fractions such as 1, 1.5, 0.75) it is exact and the fraction is the
    true one; with measured times it has a huge denominator and None comes
    back. Either way the result is checked against ``Timeline.bubble_overall``.
    """
    T = tl.step_time
    if T <= 0:
        return Fraction(0)
    busy = math.fsum(e.end - e.start for r in range(tl.P) for e in tl.rank_events(r))
    frac = 1 - Fraction(busy) / (tl.P * Fraction(T))
    if frac.denominator > MAX_DEN or abs(float(frac) - tl.bubble_overall) > 1e-9:
        return None
    return frac


def bubble_code(tl: Timeline) -> str | float:
    """The overall bubble for embedding: ``"n/d"`` when exact and small, else a float."""
    frac = exact_bubble(tl)
    if frac is None:
        return round(tl.bubble_overall, 6)
    return f"{frac.numerator}/{frac.denominator}"


def percent_text(x: float) -> str:
    """``0.0857...`` -> ``"8.6%"`` (one decimal, as the page shows it)."""
    return f"{100 * x:.1f}%"


def fraction_text(frac: Fraction | None, value: float | None = None) -> str:
    """``"3/35 = 8.6%"`` for a fraction, ``"8.6%"`` for a bare value, ``"n/a"`` for none."""
    if frac is not None:
        head = "0" if frac == 0 else f"{frac.numerator}/{frac.denominator}"
        return f"{head} = {percent_text(float(frac))}"
    return "n/a" if value is None else percent_text(value)


def stage_peaks(tl: Timeline) -> list[int]:
    """Per stage, the most micro-batches whose activations it holds at once.

    Same rule as ``Timeline.peak_activations`` (held from F until B, or until W
    when the backward is split) but per stage rather than summed per rank. A
    forward-only timeline holds nothing: all zeros.
    """
    held = [0] * tl.S
    peak = [0] * tl.S
    if tl.forward_only:
        return peak
    for r in range(tl.P):
        for e in tl.rank_events(r):
            s, kind = e.action.stage, e.action.kind
            if kind == F:
                held[s] += 1
                peak[s] = max(peak[s], held[s])
            elif kind == B or kind == W:
                held[s] -= 1
    return peak
