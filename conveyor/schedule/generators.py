"""Schedule generators: pure functions ``(P, M, **options) -> Schedule``.

Each generator is registered by name with a one-line summary and, where one
exists, the closed-form bubble fraction under equal per-stage costs. Later
schedules (interleaved, zero-bubble, V-shaped) register the same way; they may
place several stages on a rank (``placement``) and split B into I and W.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

from conveyor.errors import ScheduleError
from conveyor.schedule.deps import paused_gc
from conveyor.schedule.ir import B, F, Action, Schedule, check_counts

__all__ = ["ScheduleSpec", "register", "get_spec", "schedule_names", "build_schedule",
           "naive", "gpipe", "one_f_one_b"]


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule generator.

    name:     the name users type (``--schedule gpipe``).
    build:    the generator, ``build(P, M, **options) -> Schedule``.
    summary:  one line for ``conveyor schedules``.
    bubble:   closed-form bubble fraction ``bubble(P, M)`` as an exact
              Fraction, under equal per-stage costs and free links, or None
              where no closed form is known.
    formula:  ``bubble`` as text, for reports.
    bubble_formula: the published closed-form bubble as idle time per rank,
              in F, I, W (B = I + W), as text; "" where none is published.
    bubble_time: that formula as ``bubble_time(P, v, F, I, W) -> time``.
    scope:    what the formula counts: "single step" (first start to last
              end of one step), "steady state" (each rank's own span, as when
              steps follow one another), or "upper bound".
    holds_for: when the formula holds, e.g. "M >= P".
    min_M:    ``min_M(P, v)``: the smallest M for which it holds.
    source:   where the formula is published.
    memory:   ``memory(P, M, v) -> n``: the most chunk-activations any rank
              holds (a chunk is one stage; with one stage per rank, n
              micro-batches).
    memory_text: that bound as text.
    options:  keyword options and their defaults, e.g. ``{"v": 2}``.
    """

    name: str
    build: Callable[..., Schedule]
    summary: str
    bubble: Callable[[int, int], Fraction] | None = None
    formula: str = ""
    bubble_formula: str = ""
    bubble_time: Callable[..., float] | None = None
    scope: str = ""
    holds_for: str = ""
    min_M: Callable[[int, int], int] | None = None
    source: str = ""
    memory: Callable[[int, int, int], int] | None = None
    memory_text: str = ""
    options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The spec's facts as plain data (for the CLI, the page, reports)."""
        return {"name": self.name, "summary": self.summary, "formula": self.formula or None,
                "bubble_formula": self.bubble_formula or None, "scope": self.scope or None, "holds_for": self.holds_for or None,
                "source": self.source or None, "memory": self.memory_text or None,
                "options": dict(self.options)}


_REGISTRY: dict[str, ScheduleSpec] = {}


def register(name: str, summary: str, *, bubble=None, formula: str = "", **facts):
    """Decorator: add a generator to the registry under ``name``; ``facts`` are
    the other ScheduleSpec fields."""
    def wrap(fn):
        _REGISTRY[name] = ScheduleSpec(name, fn, summary, bubble, formula, **facts)
        return fn
    return wrap


def schedule_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ScheduleSpec:
    """The registered spec; ScheduleError with close matches for an unknown name."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ScheduleError(
            f"unknown schedule {name!r}; {hint}choose one of: {', '.join(_REGISTRY)}") from None


def build_schedule(name: str, P: int, M: int, **options) -> Schedule:
    """Generate schedule ``name`` for P ranks and M micro-batches."""
    spec = get_spec(name)
    check_counts(P, M)
    with paused_gc():
        return spec.build(P, M, **options)


def _fill_drain(P: int, M: int) -> Fraction:
    return Fraction(P - 1, M + P - 1)


# -- generators ---------------------------------------------------------------
# Stage s lives on rank s for all three (one chunk per rank).

@register("naive", "the whole batch as one micro-batch: one stage works, P-1 wait (seed Step 4)",
          bubble=lambda P, M: Fraction(P - 1, P), formula="(P-1)/P",
          scope="single step", memory=lambda P, M, v: 1, memory_text="1")
def naive(P: int, M: int = 1) -> Schedule:
    """One fat batch: forward down the chain, backward back up. M is ignored (M=1)."""
    check_counts(P, M)
    rows = tuple((Action(s, F, 0), Action(s, B, 0)) for s in range(P))
    return Schedule("naive", P, 1, rows, meta={"requested_M": M})


@register("gpipe", "all forwards, then all backwards: fill and drain (GPipe)",
          bubble=_fill_drain, formula="(P-1)/(M+P-1)", bubble_formula="(P-1)(F+B)",
          bubble_time=lambda P, v, F, I, W: (P - 1) * (F + I + W), scope="single step",
          holds_for="any M", min_M=lambda P, v: 1, source="Huang et al., GPipe (2019)",
          memory=lambda P, M, v: M, memory_text="M")
def gpipe(P: int, M: int) -> Schedule:
    """Fill-drain: every rank runs F of mb 0..M-1, then B of mb 0..M-1."""
    check_counts(P, M)
    rows = tuple(tuple(Action(s, F, mb) for mb in range(M)) +
                 tuple(Action(s, B, mb) for mb in range(M)) for s in range(P))
    return Schedule("gpipe", P, M, rows)


@register("1f1b", "one forward, one backward after a warm-up (PipeDream-Flush)",
          bubble=_fill_drain, formula="(P-1)/(M+P-1)", bubble_formula="(P-1)(F+B)",
          bubble_time=lambda P, v, F, I, W: (P - 1) * (F + I + W), scope="single step",
          holds_for="any M", min_M=lambda P, v: 1,
          source="Narayanan et al., PipeDream-Flush (2021); ZB paper (Qi et al. 2024) Table 1",
          memory=lambda P, M, v: min(P, M), memory_text="min(P, M)")
def one_f_one_b(P: int, M: int) -> Schedule:
    """Stage s warms up with min(P-s-1, M) forwards, then alternates F and B,
    then drains the remaining backwards. At most min(P-s, M) micro-batches are
    in flight on stage s."""
    check_counts(P, M)
    rows = []
    for s in range(P):
        warm = min(P - s - 1, M)
        row = [Action(s, F, mb) for mb in range(warm)]
        for i in range(M - warm):
            row += [Action(s, F, warm + i), Action(s, B, i)]
        row += [Action(s, B, mb) for mb in range(M - warm, M)]
        rows.append(tuple(row))
    return Schedule("1f1b", P, M, tuple(rows))
