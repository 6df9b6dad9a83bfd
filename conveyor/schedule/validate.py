"""Schedule validation: the rules every schedule must keep before it is simulated
or run. A broken rule raises ValidationError naming the rank, step and action,
with the schedule grid and the failing cell marked.

Rules, checked in this order:
1. placement: every action is on the rank that holds its stage, in range;
2. completeness: each (stage, micro-batch) has exactly one F and exactly one
   backward: a B, or an I and a W (none for a forward-only schedule);
3. pairing (only when the schedule has communication actions): each send has
   its receive on the peer rank and every cross-rank input has a receive;
4. order: no action precedes, on its own rank, an action it needs (a backward
   before its forward, W before I);
5. message order (only with communication actions): between every ordered
   pair of ranks, the receiver posts its receives in the order the sender
   posts its sends, as NCCL matches them (order-safe);
6. progress: replayed with sends that never block and receives that do, every
   rank reaches the end of its list (no deadlock).
"""

from __future__ import annotations

from typing import Callable

from conveyor.errors import ValidationError
from conveyor.schedule.deps import Replay, paused_gc, replay
from conveyor.schedule.ir import (
    B, COMM_KINDS, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule,
)
from conveyor.schedule.lowering import channel_of
from conveyor.schedule.render import render_grid

__all__ = ["validate", "checked_replay"]

_NAMES = {F: "forward", B: "backward", I: "input-gradient backward", W: "weight-gradient backward",
          SEND_F: "send", RECV_F: "receive", SEND_B: "send", RECV_B: "receive"}


def _fail(schedule: Schedule, message: str, cells=(), action=None):
    cells = list(cells)
    rank, step = cells[0] if cells else (None, None)
    where = f"rank {rank} step {step}: " if cells else ""
    raise ValidationError(f"schedule {schedule.name!r}: {where}{message}", rank=rank, step=step,
                          action=action, grid=render_grid(schedule, cells))


def validate(schedule: Schedule) -> Schedule:
    """Check every rule above; return the schedule unchanged when it passes.

    Raises ValidationError on the first broken rule.
    """
    checked_replay(schedule, lambda: replay(schedule, lambda r, a: 1.0))
    return schedule


def checked_replay(schedule: Schedule, run: Callable[[], Replay]) -> Replay:
    """Validate, using ``run()`` for the progress check, and return its replay.

    The simulator passes its own timed replay so a schedule is replayed once.
    """
    where: dict[Action, tuple[int, int]] = {}
    place, S, M = schedule.placement, schedule.S, schedule.M
    backward_ok = not schedule.forward_only
    with paused_gc():
        for r, row in enumerate(schedule.actions):
            for step, a in enumerate(row):
                s, kind, mb = a
                # The common case inline; the slow path names the broken rule.
                if not (0 <= s < S and 0 <= mb < M and place[s] == r
                        and (backward_ok or kind in (F, SEND_F, RECV_F))):
                    _check_placement(schedule, r, step, a)
                if a in where:
                    _fail(schedule, f"{a} appears twice (first at rank {where[a][0]} step "
                                    f"{where[a][1]}); each action runs exactly once",
                          [(r, step)], a)
                where[a] = (r, step)
    _check_complete(schedule, where)
    if schedule.has_comms:
        _check_pairs(schedule, where)
        _check_message_order(schedule, where)
    result = run()
    _check_progress(schedule, where, result)
    return result


def _check_placement(schedule: Schedule, r: int, step: int, a: Action) -> None:
    if not 0 <= a.stage < schedule.S:
        _fail(schedule, f"{a} names stage {a.stage}, but the schedule has stages "
                        f"0..{schedule.S - 1}", [(r, step)], a)
    if not 0 <= a.mb < schedule.M:
        _fail(schedule, f"{a} names micro-batch {a.mb}, but M={schedule.M} "
                        f"(micro-batches 0..{schedule.M - 1})", [(r, step)], a)
    owner = schedule.placement[a.stage]
    if owner != r:
        _fail(schedule, f"{a} is on rank {r}, but stage {a.stage} lives on rank {owner}; "
                        f"move it to rank {owner}'s list", [(r, step)], a)
    if schedule.forward_only and a.kind not in (F, SEND_F, RECV_F):
        _fail(schedule, f"{a} is a backward action in a forward-only schedule", [(r, step)], a)


def _check_complete(schedule: Schedule, where: dict[Action, tuple[int, int]]) -> None:
    has = where.__contains__  # each action is there at most once (checked before)
    for s in range(schedule.S):
        r = schedule.placement[s]
        for mb in range(schedule.M):
            if not has((s, F, mb)):
                _fail(schedule, f"missing forward {Action(s, F, mb)}: stage {s} never runs "
                                f"micro-batch {mb}; add it to rank {r}'s list")
            if schedule.forward_only:
                continue
            b, i, w = has((s, B, mb)), has((s, I, mb)), has((s, W, mb))
            if b and (i or w):
                a = Action(s, B, mb)
                _fail(schedule, f"{a} and a split backward ({Action(s, I if i else W, mb)}) "
                                f"for the same micro-batch; use B, or I and W, not both",
                      [where[a]], a)
            if not b and not i:
                hint = (f"{Action(s, W, mb)} has no {Action(s, I, mb)}" if w
                        else f"add {Action(s, B, mb)} (or I and W)")
                fa = Action(s, F, mb)
                _fail(schedule, f"missing backward for stage {s} micro-batch {mb}: {hint}",
                      [where[fa]], fa)
            if i and not w:
                a = Action(s, I, mb)
                _fail(schedule, f"{a} has no matching {Action(s, W, mb)}: the weight gradient "
                                f"of stage {s} micro-batch {mb} is never computed", [where[a]], a)


_PEER = {  # kind -> (matching kind, stage offset of the peer action)
    SEND_F: (RECV_F, +1), RECV_F: (SEND_F, -1), SEND_B: (RECV_B, -1), RECV_B: (SEND_B, +1),
}


def _check_pairs(schedule: Schedule, where: dict[Action, tuple[int, int]]) -> None:
    S, place = schedule.S, schedule.placement
    for a, (r, step) in where.items():
        if a.kind not in COMM_KINDS:
            continue
        match_kind, offset = _PEER[a.kind]
        peer_stage = a.stage + offset
        if not 0 <= peer_stage < S:
            _fail(schedule, f"{a} has no peer: stage {a.stage} has no stage {peer_stage} "
                            f"to {'send to' if a.kind.startswith('SEND') else 'receive from'}",
                  [(r, step)], a)
        if place[peer_stage] == r:
            _fail(schedule, f"{a} talks to stage {peer_stage} on the same rank {r}; "
                            f"stages on one rank pass tensors without communication",
                  [(r, step)], a)
        peer = Action(peer_stage, match_kind, a.mb)
        if peer not in where:
            _fail(schedule, f"mismatched send/receive: {a} on rank {r} has no matching {peer} "
                            f"on rank {place[peer_stage]}", [(r, step)], a)
    # Every input that crosses ranks must arrive through a receive.
    for a, (r, step) in where.items():
        if a.kind == F and a.stage > 0 and place[a.stage - 1] != r:
            need = Action(a.stage, RECV_F, a.mb)
        elif a.kind in (B, I) and a.stage < S - 1 and place[a.stage + 1] != r:
            need = Action(a.stage, RECV_B, a.mb)
        else:
            continue
        if need not in where:
            _fail(schedule, f"{a} needs data from rank {place[need.stage + _PEER[need.kind][1]]} "
                            f"but no {need} is scheduled on rank {r}", [(r, step)], a)


def _check_message_order(schedule: Schedule, where: dict[Action, tuple[int, int]]) -> None:
    place = schedule.placement
    posted: dict[tuple[int, int], tuple[list[Action], list[Action]]] = {}
    for r, row in enumerate(schedule.actions):
        for a in row:
            if a.kind in (SEND_F, SEND_B):
                posted.setdefault(channel_of(a, place), ([], []))[0].append(a)
            elif a.kind in (RECV_F, RECV_B):
                posted.setdefault(channel_of(a, place), ([], []))[1].append(a)
    for (src, dst), (sends, recvs) in sorted(posted.items()):
        for i, (send, recv) in enumerate(zip(sends, recvs)):
            expected = _matching(send)
            if recv == expected:
                continue
            # send (posted first) would be matched with recv (meant for a later send).
            later = next(x for x in sends[i + 1:] if _matching(x) == recv)
            _fail(schedule,
                  f"messages cross between rank {src} and rank {dst}: rank {src} sends {send} "
                  f"before {later}, but rank {dst} posts {recv} before {expected}; NCCL matches "
                  f"messages between two ranks in posting order, so {recv} would receive "
                  f"{send}'s tensor. Post the receives in rank {src}'s send order: move "
                  f"{expected} before {recv} (conveyor.schedule.add_comms lowers order-safe)",
                  [where[recv], where[expected], where[send], where[later]], recv)


def _matching(send: Action) -> Action:
    """The receive that pairs with ``send``."""
    if send.kind == SEND_F:
        return Action(send.stage + 1, RECV_F, send.mb)
    return Action(send.stage - 1, RECV_B, send.mb)


def _check_progress(schedule: Schedule, where: dict[Action, tuple[int, int]],
                    result: Replay) -> None:
    if not result.stuck:
        return
    # An action waiting on an action later in its own rank's list is an order error.
    for r, (step, a, dep) in sorted(result.stuck.items()):
        dr, dstep = where[dep]
        if dr == r:
            _fail(schedule, f"{_NAMES[a.kind]} {a} comes before the {_NAMES[dep.kind]} "
                            f"{dep} it needs (step {dstep}); move {dep} earlier",
                  [(r, step), (dr, dstep)], a)
    lines = [f"rank {r} waits at step {step} ({a}) for {dep} (rank {where[dep][0]} "
             f"step {where[dep][1]})" for r, (step, a, dep) in sorted(result.stuck.items())]
    first_r, (first_step, first_a, _) = min(result.stuck.items())
    _fail(schedule, "deadlock: no rank can move on; " + "; ".join(lines),
          [(r, step) for r, (step, _, _) in result.stuck.items()], first_a)
