"""Simulated decoding: the decode schedule (``conveyor.schedule.decode``)
under per-round costs, and what it yields: tokens per time unit and each
rank's idle fraction, against the number of lanes M.

Costs: ``step`` is one real stage's time for one token step of one lane
(a forward of T = 1 per sequence), ``prefill`` its time for one prefill
chunk (default: ``step`` times the chunk's length in tokens, for a stage
whose time grows with the tokens it reads), ``latency`` the time of every
transfer, the loop cut's included. The simulator is the one every schedule
uses: each virtual stage gets its round's cost (a per-stage CostModel).

The story the numbers tell: at M = 1 a rank works one round in P, so
each rank is idle (P-1)/P of the time, and tokens per time unit are one
process's; with M >= P lanes in flight every rank works all the time
(less the fill and drain at the ends and the loop's link time) and the
pipeline makes up to P times the tokens of one process.

No torch.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from conveyor.errors import CostModelError
from conveyor.schedule.decode import decode_plan, decode_schedule, round_of
from conveyor.schedule.lowering import add_comms
from conveyor.schedule.validate import validate
from conveyor.sim.cost import CostModel
from conveyor.sim.simulate import simulate
from conveyor.schedule.ir import Action
from conveyor.sim.timeline import Event, Timeline

__all__ = ["decode_costs", "simulate_decode", "decode_summary", "decode_rows",
           "idle_at_one_lane", "fold_rounds"]


def _positive(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 \
            or x == float("inf"):
        raise CostModelError(f"decode cost {name}={x!r} is not valid; give a positive number")
    return float(x)


def decode_costs(S: int, rounds: int, chunks: int, *, step: float | Sequence[float] = 1.0,
                 prefill: float | Sequence[float] | None = None, chunk_tokens: int = 1,
                 latency: float = 0.0) -> CostModel:
    """The CostModel of a decode schedule of S real stages and ``rounds``
    rounds: virtual stage k*S + s costs ``prefill[s]`` in the first
    ``chunks`` rounds and ``step[s]`` after (one number: every stage).
    ``prefill`` defaults to ``step * chunk_tokens``."""
    steps = [_positive("step", x) for x in (step if isinstance(step, (list, tuple))
                                            else [step] * S)]
    if len(steps) != S:
        raise CostModelError(f"{len(steps)} step times for {S} stages; give one per stage")
    if prefill is None:
        pre = [x * chunk_tokens for x in steps]
    else:
        pre = [_positive("prefill", x) for x in (prefill if isinstance(prefill, (list, tuple))
                                                  else [prefill] * S)]
        if len(pre) != S:
            raise CostModelError(f"{len(pre)} prefill times for {S} stages; give one per stage")
    forward = []
    for vs in range(S * rounds):
        s, k = round_of(vs, S)
        forward.append(pre[s] if k < chunks else steps[s])
    return CostModel(forward=forward, backward=0.0, latency=latency)


def simulate_decode(P: int, M: int, *, new_tokens: int, chunks: int = 1,
                    step: float | Sequence[float] = 1.0,
                    prefill: float | Sequence[float] | None = None, chunk_tokens: int = 1,
                    latency: float = 0.0, placement: Sequence[int] | None = None,
                    unit: str = "slot") -> Timeline:
    """The predicted timeline of decoding M lanes over P ranks (see the
    module docstring for the costs). Raises ScheduleError / CostModelError
    naming a bad count or cost."""
    plan = decode_plan(P, M, new_tokens=new_tokens, chunks=chunks, placement=placement)
    sched = validate(add_comms(decode_schedule(P, M, new_tokens=new_tokens, chunks=chunks,
                                               placement=placement)))
    costs = decode_costs(plan.S, plan.rounds, chunks, step=step, prefill=prefill,
                         chunk_tokens=chunk_tokens, latency=latency)
    tl = simulate(sched, costs, check=False, unit=unit)
    tl.meta["decode"] = plan.as_dict()
    return tl


def decode_summary(tl: Timeline, *, sequences_per_lane: int = 1) -> dict:
    """Tokens per time unit and idle fractions of a decode timeline
    (simulated or measured; its meta["decode"] holds the plan).

    tokens:        M x sequences_per_lane x new_tokens (every sequence runs
                   to the end: no stop token in a simulation).
    time:          first start to last end.
    tokens_per_time: tokens / time.
    idle:          per rank, the fraction of ``time`` it computes nothing.
    idle_overall:  idle rank-time over all rank-time.
    """
    plan = tl.meta.get("decode")
    if plan is None:
        raise CostModelError("this timeline is not a decode (no meta['decode']); simulate it "
                             "with simulate_decode")
    tokens = plan["M"] * sequences_per_lane * plan["new_tokens"]
    time = tl.step_time
    return {"P": plan["P"], "M": plan["M"], "new_tokens": plan["new_tokens"],
            "chunks": plan["chunks"], "tokens": tokens, "time": time,
            "tokens_per_time": tokens / time if time > 0 else 0.0,
            "idle": tl.bubbles(), "idle_overall": tl.bubble_overall}


def idle_at_one_lane(P: int) -> Fraction:
    """(P-1)/P: each rank's idle fraction with one lane, in steady state."""
    return Fraction(P - 1, P)


def decode_rows(P: int, lanes: Sequence[int], *, new_tokens: int, chunks: int = 1,
                step: float = 1.0, prefill: float | None = None, latency: float = 0.0
                ) -> list[dict]:
    """One ``decode_summary`` per lane count, plus ``speedup``: tokens per
    time against one process that holds every stage (P times ``step`` per
    token, one lane after another)."""
    rows = []
    for M in lanes:
        row = decode_summary(simulate_decode(P, M, new_tokens=new_tokens, chunks=chunks,
                                             step=step, prefill=prefill, latency=latency))
        one = simulate_decode(1, M, new_tokens=new_tokens, chunks=chunks, step=step * P,
                              prefill=None if prefill is None else prefill * P)
        row["one_process_tokens_per_time"] = decode_summary(one)["tokens_per_time"]
        row["speedup"] = row["tokens_per_time"] / row["one_process_tokens_per_time"]
        rows.append(row)
    return rows


def fold_rounds(tl: Timeline) -> Timeline:
    """The decode timeline with every round's virtual stage folded onto its
    real stage: S rows (not S x rounds), each event labelled by its lane, as
    the terminal and PNG charts draw it. Metrics are unchanged."""
    plan = tl.meta.get("decode")
    if plan is None:
        raise CostModelError("this timeline is not a decode (no meta['decode'])")
    S = plan["S"]
    events = [Event(e.rank, Action(e.action.stage % S, e.action.kind, e.action.mb),
                    e.start, e.end) for e in tl.events]
    return Timeline(P=tl.P, M=tl.M, S=S, schedule=tl.schedule, events=events, source=tl.source,
                    unit=tl.unit, forward_only=True, meta=dict(tl.meta))
