"""Lowering: add the communication actions a compute-only schedule implies.

After ``add_comms``, every tensor that crosses ranks has an explicit SEND on the
producing rank, right after the action that made it, and an explicit RECV on
the consuming rank, right before the action that needs it. The runtime posts
receives early (all RECVs up to the next compute action at once), so placing a
RECV late costs nothing.
"""

from __future__ import annotations

from conveyor.schedule.ir import (
    B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, Action, Schedule,
)

__all__ = ["add_comms"]


def add_comms(schedule: Schedule) -> Schedule:
    """Return the schedule with SEND_*/RECV_* actions inserted (idempotent)."""
    if schedule.has_comms:
        return schedule
    S, place = schedule.S, schedule.placement
    rows = []
    for r, row in enumerate(schedule.actions):
        out: list[Action] = []
        for a in row:
            s, kind, mb = a
            if kind == F and s > 0 and place[s - 1] != r:
                out.append(Action(s, RECV_F, mb))
            elif kind in (B, I) and s < S - 1 and place[s + 1] != r:
                out.append(Action(s, RECV_B, mb))
            out.append(a)
            if kind == F and s < S - 1 and place[s + 1] != r:
                out.append(Action(s, SEND_F, mb))
            elif kind in (B, I) and s > 0 and place[s - 1] != r:
                out.append(Action(s, SEND_B, mb))
        rows.append(tuple(out))
    return schedule.replace(actions=tuple(rows))
