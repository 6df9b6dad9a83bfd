"""What the interpreter can decide once per schedule, before any step runs.

For each rank of a lowered schedule, a RankPlan holds:

* ``peer``: for each position, the rank at the other end of a SEND/RECV
  (-1 for compute actions), so that no action looks up the placement.
* ``recvs`` and ``post_limit``: the positions of the receives, in list order,
  and for each position i the last position whose receive may be posted
  before action i runs. Receives are always posted in list order (a receive
  is never posted before an earlier one), which is what a transport that
  matches messages in posting order (NCCL, or gloo in strict mode) needs;
  with ``prepost`` the limit reaches up to the next compute action, so that
  the transfer overlaps the compute before it.
* ``release_after``: for each position k, the sends whose buffers may be
  waited on and let go right after action k. A send may be waited on once
  the rank holds proof that its matching receive has completed on the peer:
  action k causally follows an action of the peer at or after that receive
  (a vector clock over the schedule's dependencies, in the order the replay
  engine of ``conveyor.schedule.deps`` runs them). The wait then returns at
  once, so it cannot deadlock, whatever other ranks do. Sends without such
  proof are waited on at the end of the step.
* ``first_transfer``: the position before which the rank first sends or
  posts a receive (its list's length when it never does); the compute
  before it touches no peer, so it may overlap the step's agreement.
* ``first_recv``: the position of its first receive, where it is likely
  to wait (at the latest there, the first stage's rank waits out the fill):
  a place for work that must be done before the step ends but not soon.

For 1F1B this releases stage s's activation send of micro-batch mb when the
gradient of mb comes back, so the buffers a rank holds stay within 1F1B's
bound of min(P - s, M) micro-batches however large M is.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from conveyor.errors import ScheduleError
from conveyor.schedule.deps import Dependencies, replay
from conveyor.schedule.ir import B, RECV_B, RECV_F, SEND_B, SEND_F, Action, Schedule

__all__ = ["RankPlan", "peer_columns", "plan_rank", "vector_clocks", "finishing_rank"]


@dataclass(frozen=True)
class RankPlan:
    """One rank's plan; see the module docstring. Positions index the rank's list."""

    peer: tuple[int, ...]
    recvs: tuple[int, ...]
    post_limit: tuple[int, ...]
    release_after: tuple[tuple[Action, ...], ...]
    first_transfer: int = 0
    first_recv: int = 0


def _matching_recv(schedule: Schedule, a: Action) -> Action:
    if a.kind == SEND_F:
        return Action(a.stage + 1, RECV_F, a.mb)
    return Action(a.stage - 1, RECV_B, a.mb)


def _peer(schedule: Schedule, a: Action) -> int:
    kind, place = a.kind, schedule.placement
    if kind == SEND_F or kind == RECV_B:
        return place[a.stage + 1]
    if kind == RECV_F or kind == SEND_B:
        return place[a.stage - 1]
    return -1


def _memo(schedule: Schedule, key, compute):
    """What is planned for ``schedule``, computed once and kept on the object,
    so it lives exactly as long as the schedule. (An lru_cache keyed by the
    schedule would keep old schedules alive and, given an equal schedule that
    is another object, compare them action by action: ~10 ms a lookup at
    P = 128, M = 512.)"""
    memo = schedule.__dict__.get("_memo")
    if memo is None:
        memo = {}
        object.__setattr__(schedule, "_memo", memo)
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def vector_clocks(schedule: Schedule) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """``clocks[r][k][q]``: the last position of rank q's list that rank r's
    action k causally follows (runs after, through the schedule's
    dependencies and each rank's list order); -1 when none. Raises
    ScheduleError if the replay does not get through the schedule."""
    return _memo(schedule, "clocks", lambda: _vector_clocks(schedule))


def _vector_clocks(schedule: Schedule) -> tuple[tuple[tuple[int, ...], ...], ...]:
    rp = replay(schedule, lambda r, a: 1.0)
    if rp.stuck:
        r, (i, a, dep) = next(iter(rp.stuck.items()))
        raise ScheduleError(f"schedule {schedule.name!r} deadlocks: rank {r} waits at step "
                            f"{i} ({a}) for {dep}; validate it first")
    P = schedule.P
    deps = Dependencies(schedule)
    where = {a: (r, i) for r, i, a in schedule}
    # Start times of the unit-time replay are a topological order of the dependencies.
    order = sorted(where, key=lambda a: rp.start[a])
    clock: dict[Action, list[int]] = {}
    for a in order:
        r, i = where[a]
        v = list(clock[schedule.actions[r][i - 1]]) if i > 0 else [-1] * P
        for d, _ in deps(a):
            dv = clock.get(d)
            if dv is not None:
                v = [max(x, y) for x, y in zip(v, dv)]
        v[r] = i
        clock[a] = v
    return tuple(tuple(tuple(clock[a]) for a in row) for row in schedule.actions)


def _matching_send(a: Action) -> Action:
    if a.kind == RECV_F:
        return Action(a.stage - 1, SEND_F, a.mb)
    return Action(a.stage + 1, SEND_B, a.mb)


def _positions(schedule: Schedule) -> dict[Action, int]:
    return _memo(schedule, "positions", lambda: {a: i for r, i, a in schedule})


def _links(schedule: Schedule) -> set[tuple[int, int]]:
    """The pairs of ranks (low, high) that exchange messages."""
    return {tuple(sorted((r, _peer(schedule, a)))) for r, row in enumerate(schedule.actions)
            for a in row if a.kind in (SEND_F, SEND_B)}


def _is_forest(P: int, links: set[tuple[int, int]]) -> bool:
    """True when the ranks' message links form no cycle (a line, a V, a tree)."""
    parent = list(range(P))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


def peer_columns(schedule: Schedule) -> tuple[dict[int, tuple[int, ...]], ...]:
    return _memo(schedule, "columns", lambda: _peer_columns(schedule))


def _peer_columns(schedule: Schedule) -> tuple[dict[int, tuple[int, ...]], ...]:
    """``cols[r][q][k] == vector_clocks(schedule)[r][k][q]`` for every rank q
    that rank r exchanges messages with: all that the release plan needs.

    Where the message links form no cycle (every line or V placement), r can
    learn of q's progress only from q's own messages: a chain from q that
    reached r through another neighbour p would have had to cross r first,
    since in a forest every path from q to p runs through r. The column is
    then the running maximum of the matching sends' positions over r's
    receives from q, O(actions) in all instead of the vector clocks' O(P x
    actions), which at P = 128, M = 4096 is minutes. Cyclic placements (a
    loop of chunks) take the general vector clocks."""
    links = _links(schedule)
    peers = [sorted({q for pair in links if r in pair for q in pair if q != r})
             for r in range(schedule.P)]
    if not _is_forest(schedule.P, links):
        clocks = vector_clocks(schedule)
        # A rank with peers has actions, so its clocks have P columns.
        return tuple({q: tuple(k[q] for k in clocks[r]) for q in peers[r]}
                     for r in range(schedule.P))
    pos = _positions(schedule)
    out = []
    for r, row in enumerate(schedule.actions):
        cur = {q: -1 for q in peers[r]}
        cols: dict[int, list[int]] = {q: [] for q in peers[r]}
        for a in row:
            if a.kind == RECV_F or a.kind == RECV_B:
                q = _peer(schedule, a)
                cur[q] = max(cur[q], pos[_matching_send(a)])
            for q, col in cols.items():
                col.append(cur[q])
        out.append({q: tuple(col) for q, col in cols.items()})
    return tuple(out)


def plan_rank(schedule: Schedule, rank: int, prepost: bool) -> RankPlan:
    """The RankPlan of ``rank`` in the lowered ``schedule`` (kept on the schedule)."""
    return _memo(schedule, ("rank", rank, bool(prepost)),
                 lambda: _plan_rank(schedule, rank, prepost))


def _plan_rank(schedule: Schedule, rank: int, prepost: bool) -> RankPlan:
    row = schedule.actions[rank]
    n = len(row)
    peer = tuple(_peer(schedule, a) for a in row)
    recvs = tuple(i for i, a in enumerate(row) if a.kind in (RECV_F, RECV_B))
    limit = list(range(n))
    if prepost:
        nxt = n  # position of the first compute action after i
        for i in reversed(range(n)):
            limit[i] = nxt - 1
            if row[i].is_compute:
                nxt = i
    release: list[list[Action]] = [[] for _ in range(n)]
    sends = [(i, a) for i, a in enumerate(row) if a.kind in (SEND_F, SEND_B)]
    if sends:
        cols = peer_columns(schedule)[rank]
        pos = _positions(schedule)
        # Column q of this rank's clocks never decreases along the list.
        for i, a in sends:
            q, j = peer[i], pos[_matching_recv(schedule, a)]
            k = bisect_left(cols[q], j, lo=i + 1)
            if k < n:
                release[k].append(a)
    # Receives are posted before action i up to limit[i]; sends and receives
    # run as actions of their own.
    first = next((i for i, a in enumerate(row)
                  if not a.is_compute or (recvs and limit[i] >= recvs[0])), n)
    return RankPlan(peer, recvs, tuple(limit), tuple(tuple(x) for x in release), first,
                    recvs[0] if recvs else n)


def finishing_rank(schedule: Schedule) -> int:
    """The rank whose last action ends last when F, I and W take one unit
    and B two (the lowest such rank on a tie): the rank the others wait for
    at the end of a step, so a collective that ends the step is cheapest
    rooted there (rank 0 for 1F1B and GPipe, whose first stage runs the last
    backward). Kept on the schedule."""
    return _memo(schedule, "finishing", lambda: _finishing_rank(schedule))


def _finishing_rank(schedule: Schedule) -> int:
    rp = replay(schedule, lambda r, a: 2.0 if a.kind == B else
                (1.0 if a.is_compute else 0.0))
    if rp.stuck:
        return 0  # validated schedules never stick; any rank is a correct root
    ends = [rp.end_of(row[-1]) if row else float("-inf") for row in schedule.actions]
    return max(range(schedule.P), key=lambda r: (ends[r], -r))
