"""Lowering: add the communication actions a compute-only schedule implies.

After ``add_comms``, every tensor that crosses ranks has an explicit SEND on the
producing rank, right after the action that made it, and an explicit RECV on
the consuming rank, before the action that needs it. The runtime posts
receives early (all RECVs up to the next compute action at once), so placing a
RECV late costs nothing.

Order safety. NCCL matches point-to-point messages between two ranks in the
order they were posted, not by tag. So between every ordered pair of ranks
(src, dst) the receives on dst must be posted in the order src posts its
sends. Sends go out in the order src produces them; when dst consumes them in
another order (interleaved and V-shaped schedules do), the receive of an
earlier-sent message is posted together with the later one's. That costs no
time: the earlier message was sent first, so it is there no later than the
one the rank waits for (with equal link costs on the pair's cuts).
"""

from __future__ import annotations

from conveyor.schedule.ir import (
    B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, Action, Schedule,
)

__all__ = ["add_comms", "channel_of"]


def channel_of(a: Action, placement: tuple[int, ...]) -> tuple[int, int]:
    """(sending rank, receiving rank) of a communication action."""
    s, kind, _ = a
    if kind in (SEND_F, RECV_F):
        src_stage = s if kind == SEND_F else s - 1
        return placement[src_stage], placement[src_stage + 1]
    src_stage = s if kind == SEND_B else s + 1
    return placement[src_stage], placement[src_stage - 1]


def add_comms(schedule: Schedule) -> Schedule:
    """Return the schedule with SEND_*/RECV_* actions inserted (idempotent).

    Sends follow their producing action; receives precede their consumer and
    are ordered, per sending rank, in that rank's send order (order-safe under
    NCCL's matching). In: a compute-only schedule (or an already lowered one,
    returned as is). Out: the lowered schedule.
    """
    if schedule.has_comms:
        return schedule
    S, place = schedule.S, schedule.placement
    sends: list[list[Action]] = []
    for r, row in enumerate(schedule.actions):
        out: list[Action] = []
        for a in row:
            s, kind, mb = a
            out.append(a)
            if kind == F and s < S - 1 and place[s + 1] != r:
                out.append(Action(s, SEND_F, mb))
            elif kind in (B, I) and s > 0 and place[s - 1] != r:
                out.append(Action(s, SEND_B, mb))
        sends.append(out)
    # Per channel, the receives in the order the sender posts the sends.
    queue: dict[tuple[int, int], list[Action]] = {}
    for r, row in enumerate(sends):
        for a in row:
            if a.kind == SEND_F:
                queue.setdefault((r, place[a.stage + 1]), []).append(Action(a.stage + 1, RECV_F, a.mb))
            elif a.kind == SEND_B:
                queue.setdefault((r, place[a.stage - 1]), []).append(Action(a.stage - 1, RECV_B, a.mb))
    index = {recv: (ch, i) for ch, recvs in queue.items() for i, recv in enumerate(recvs)}
    posted = {ch: 0 for ch in queue}
    rows = []
    for r, row in enumerate(sends):
        out = []
        for a in row:
            s, kind, mb = a
            need = None
            if kind == F and s > 0 and place[s - 1] != r:
                need = Action(s, RECV_F, mb)
            elif kind in (B, I) and s < S - 1 and place[s + 1] != r:
                need = Action(s, RECV_B, mb)
            if need is not None:
                ch, i = index[need]
                # Post every receive sent before this one on the channel, in order.
                while posted[ch] <= i:
                    out.append(queue[ch][posted[ch]])
                    posted[ch] += 1
            out.append(a)
        rows.append(tuple(out))
    return schedule.replace(actions=tuple(rows))
