"""A measured rank's idle time, split into what it was waiting for.

A measured timeline records, besides the compute actions, each rank's SEND
and RECV: a receive spans from when the rank started waiting for a message to
when the message was there. Part of that wait is the peer not having sent yet
(the pipeline bubble: the rank waits on another rank's work) and part is the
message on its way (transfer in flight). The matching send on the peer says
which: before it started, the rank waited on its peer; from then until the
receive ended, the data was in flight.

So every moment of a rank's step that is not compute is one of

- transfer in flight: inside a SEND of this rank, or inside a RECV after the
  peer's matching SEND started;
- waiting on a peer (the bubble): any other idle moment, i.e. inside a RECV
  before the peer sent, and the time in no event at all (before a rank's first
  action, after its last one, and the runtime's own steps between actions).

The two add up to the rank's idle time, ``1 - busy / step``, the bubble figure
``Timeline.bubble`` gives, so the page's red and blue areas add up to it too.
Clocks of different processes are aligned by the runtime to well under a
millisecond, not exactly: a send that seems to start after its receive ended
counts the whole receive as waiting.

Index letters as in ``conveyor.schedule.ir``: r rank, s stage, mb micro-batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from conveyor.schedule.ir import COMPUTE_KINDS, RECV_B, RECV_F, SEND_B, SEND_F, Action
from conveyor.sim.timeline import Event, Timeline

__all__ = ["WAIT", "TRANSFER", "Idle", "Message", "split_idle", "idle_totals"]

WAIT, TRANSFER = "wait", "transfer"


class Message(NamedTuple):
    """A message a rank waited for: ``recv`` on rank ``to``, sent by ``send`` on
    rank ``sender`` (``send`` None when the timeline has no matching send)."""

    recv: Event
    to: int
    send: Event | None
    sender: int | None


class Idle(NamedTuple):
    """Rank ``rank`` idle from ``start`` to ``end``: ``kind`` WAIT or TRANSFER,
    and the message it was receiving then, if any."""

    rank: int
    start: float
    end: float
    kind: str
    message: Message | None


def _sender(a: Action) -> Action | None:
    """The send that a receive ``a`` gets its data from."""
    if a.kind == RECV_F:
        return Action(a.stage - 1, SEND_F, a.mb)
    if a.kind == RECV_B:
        return Action(a.stage + 1, SEND_B, a.mb)
    return None


def _gaps(row: list[Event], t0: float, t1: float) -> list[tuple[float, float]]:
    """The parts of [t0, t1] not covered by ``row`` (compute events, by start)."""
    out, t = [], t0
    for e in row:
        if e.start > t:
            out.append((t, e.start))
        t = max(t, e.end)
    if t1 > t:
        out.append((t, t1))
    return out


def _cut(gaps, spans):
    """Split each gap by ``spans`` [(start, end, kind, message)], sorted by
    start, into (start, end, kind, message) pieces that cover the gap exactly;
    what no span covers is WAIT without a message."""
    out = []
    for g0, g1 in gaps:
        t = g0
        for s0, s1, kind, msg in spans:
            a, b = max(s0, t), min(s1, g1)
            if b <= a:
                continue
            if a > t:
                out.append((t, a, WAIT, None))
            out.append((a, b, kind, msg))
            t = b
        if g1 > t:
            out.append((t, g1, WAIT, None))
    return out


def split_idle(tl: Timeline) -> list[Idle]:
    """Every idle moment of every rank in the step of ``tl``, as WAIT or
    TRANSFER pieces in time order per rank (see the module docstring). A
    timeline without SEND/RECV events (a simulated one) is all WAIT. A piece
    inside a receive carries that receive's message, so the page can name who
    had not sent yet (WAIT) or whose data was on its way (TRANSFER)."""
    t0, t1 = tl.t0, tl.t0 + tl.step_time
    sends = {e.action: e for e in tl.events if e.action.kind in (SEND_F, SEND_B)}
    out: list[Idle] = []
    for r in range(tl.P):
        spans = []
        for e in tl.rank_events(r, compute_only=False):
            kind = e.action.kind
            if kind in COMPUTE_KINDS:
                continue
            if kind in (SEND_F, SEND_B):
                spans.append((e.start, e.end, TRANSFER, None))
                continue
            send = sends.get(_sender(e.action))
            msg = Message(e, r, send, None if send is None else send.rank)
            sent = e.end if send is None else min(max(e.start, send.start), e.end)
            spans.append((e.start, sent, WAIT, msg))      # the peer had not sent yet
            spans.append((sent, e.end, TRANSFER, msg))    # sent, not arrived yet
        spans.sort(key=lambda x: (x[0], x[1]))
        for a, b, kind, msg in _cut(_gaps(tl.rank_events(r), t0, t1), spans):
            out.append(Idle(r, a, b, kind, msg))
    return out


def idle_totals(tl: Timeline, pieces: list[Idle] | None = None) -> dict[str, float]:
    """Shares of the step's rank-time (P x step): ``wait`` (the bubble: waiting
    on a peer), ``transfer`` (in flight) and ``idle`` (their sum, equal to
    ``tl.bubble_overall`` up to rounding)."""
    pieces = split_idle(tl) if pieces is None else pieces
    total = tl.P * tl.step_time
    if total <= 0:
        return {"wait": 0.0, "transfer": 0.0, "idle": 0.0}
    wait = math.fsum(p.end - p.start for p in pieces if p.kind == WAIT) / total
    transfer = math.fsum(p.end - p.start for p in pieces if p.kind == TRANSFER) / total
    return {"wait": wait, "transfer": transfer, "idle": wait + transfer}
