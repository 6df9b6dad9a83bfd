"""Repeat, squeeze, reorder: a V building block (``conveyor.schedule.vblocks``)
made into rank orders for M micro-batches, as in the paper's framework (Qi et
al., NeurIPS 2024, Section 3).

Repeating a block every T = 6 slots gives a valid timed schedule: every
dependency holds inside the block and shifts with it, and no two passes of
a rank share a slot. Its steady state has no idle slot; its warm-up and
cool-down do, while the memory there is below the steady peak. Reordering
fills them without raising the peak. Two reorderings are here, and
``build_from_block`` keeps the shorter result:

- ``list_reorder``: one pass over the slots; each rank takes, among the
  first pending pass of each of its six lanes (stage x F/I/W) in its current
  order, the first whose inputs are there, an F only while the rank,
  counting the passes listed before it, stays within the cap, and an I or F
  before a W (the W feeds nobody). A pass runs early only once everything it
  needs has run, so no wait cycle can form; counted in list order, the
  memory of the passes left never rises, so the cap holds.
- ``compact``: the timed grid, squeezed (same order, as soon as possible),
  then each empty slot takes the earliest later pass of its rank whose inputs
  are there and that keeps the rank within the cap, and an I may take a W's
  slot when the W's delay keeps within it; every other pass stays where it
  is, so each move keeps a valid timed schedule. Repeated while the span
  falls; slower, so only for small schedules.

Neither is always the shorter (measured over P = 4..24: list_reorder within
a slot or two of compact at k = 1, 2, compact up to 7 % shorter at k = 3).

Passes are integer codes here, ``(s * 3 + kind) * M + mb`` with kind 0, 1, 2
for F, I, W: a schedule at conveyor's size bound has three million of them.
"""

from __future__ import annotations

from conveyor.schedule.deps import replay
from conveyor.schedule.ir import F, I, W, Action, Schedule, v_placement
from conveyor.schedule.vblocks import T, Block

__all__ = ["rank_codes", "list_reorder", "compact", "build_from_block", "unit_time"]

_KINDS = (F, I, W)
_CODE = {F: 0, I: 1, W: 2}


def rank_codes(block: Block, M: int) -> list[list[int]]:
    """Each rank's passes of the block repeated M times, in slot order."""
    P = block.P
    rows: list[list[tuple[int, int]]] = [[] for _ in range(P)]
    for (s, kind), t in block.slot.items():
        base = (s * 3 + _CODE[kind]) * M
        rows[min(s, 2 * P - 1 - s)].extend((t + T * mb, base + mb) for mb in range(M))
    return [[c for _, c in sorted(row)] for row in rows]


def _actions(rows: list[list[int]], M: int) -> list[list[Action]]:
    K = 3 * M
    return [[Action(c // K, _KINDS[(c // M) % 3], c % M) for c in row] for row in rows]


def list_reorder(P: int, M: int, rows: list[list[int]], cap: int
                 ) -> tuple[list[list[int]], int]:
    """The one-pass reordering (module doc) of the rank orders ``rows``
    (codes) under ``cap`` chunk-activations per rank. Returns the new orders
    and their span in slots."""
    S, K = 2 * P, 3 * M
    big = 1 << 60
    end = [big] * (S * K)              # end slot of each pass run so far
    done = [bytearray(len(row)) for row in rows]
    first = [0] * P                    # first index not yet run, per rank
    held = [0] * P
    pending = [0] * (S * 3)            # passes left per lane (s * 3 + kind)
    for row in rows:
        for c in row:
            pending[c // M] += 1
    alive = [sum(1 for s in (r, S - 1 - r) for k in range(3) if pending[s * 3 + k])
             for r in range(P)]
    out: list[list[int]] = [[] for _ in range(P)]
    left = sum(map(len, rows))
    t = 0
    while left:
        chosen = []
        for r in range(P):
            row, d, n = rows[r], done[r], len(rows[r])
            i, m = first[r], held[r]
            f_ok = m < cap
            seen = 0                   # lanes met, as bits of the lane number
            lanes = 0
            take = w_at = -1
            while i < n and lanes < alive[r]:
                if d[i]:
                    i += 1
                    continue
                c = row[i]
                lane = c // M
                kind = lane % 3
                bit = 1 << (lane - 3 * r if lane < 3 * P else lane - 3 * (S - 1 - r) + 3)
                if not seen & bit:
                    seen |= bit
                    lanes += 1
                    s = lane // 3
                    if kind == 0:
                        ok = f_ok and (s == 0 or end[c - K] <= t)
                    elif kind == 1:
                        ok = end[c - M] <= t and (s == S - 1 or end[c + K] <= t)
                    else:
                        ok = end[c - M] <= t
                    if ok:
                        if kind != 2:
                            take = i
                            break
                        if w_at < 0:
                            w_at = i
                if kind == 0:
                    m += 1
                    f_ok = f_ok and m < cap
                elif kind == 2:
                    m -= 1
                i += 1
            if take < 0:
                take = w_at
            if take >= 0:
                chosen.append((r, take))
        for r, i in chosen:  # after every rank chose: this slot's ends are seen next slot
            c = rows[r][i]
            done[r][i] = 1
            end[c] = t + 1
            out[r].append(c)
            left -= 1
            lane = c // M
            pending[lane] -= 1
            if not pending[lane]:
                alive[r] -= 1
            kind = lane % 3
            held[r] += 1 if kind == 0 else (-1 if kind == 2 else 0)
            j, d, n = first[r], done[r], len(rows[r])
            while j < n and d[j]:
                j += 1
            first[r] = j
        t += 1
    return out, t


def _squeeze(P: int, M: int, rows: list[list[int]]) -> tuple[list[int], int]:
    """Start slot of every pass (indexed by code) with the same orders run as
    soon as possible, and the span."""
    sched = Schedule("v", P, M, tuple(map(tuple, _actions(rows, M))), v_placement(P))
    rp = replay(sched, lambda r, a: 1.0)
    when = [0] * (2 * P * 3 * M)
    for a, t in zip(rp.order, rp.starts):
        when[(a.stage * 3 + _CODE[a.kind]) * M + a.mb] = int(round(t))
    return when, int(round(max(rp.ends)))


def compact(P: int, M: int, when: list[int], cap: int) -> list[list[int]]:
    """One grid pass (module doc) over the slots ``when`` (by code) of a
    timed V schedule within ``cap``; returns the rank orders it leaves."""
    S, K = 2 * P, 3 * M
    span = max(when) + 1
    grid: list[list[int]] = [[-1] * span for _ in range(P)]
    for c, t in enumerate(when):
        grid[min(c // K, S - 1 - c // K)][t] = c
    mem = []  # mem[r][t]: chunk-activations rank r holds during slot t
    for r in range(P):
        cur, m = 0, [0] * span
        for t, c in enumerate(grid[r]):
            kind = (c // M) % 3 if c >= 0 else -1
            cur += kind == 0
            m[t] = cur
            cur -= kind == 2
        mem.append(m)
    nxt = [0] * (S * 3)  # next micro-batch of each lane not yet placed

    def ready(c: int, t: int) -> bool:
        s, kind = divmod(c // M, 3)
        if kind == 0:
            return s == 0 or when[c - K] < t
        if kind == 1:
            return when[c - M] < t and (s == S - 1 or when[c + K] < t)
        return when[c - M] < t

    for t in range(span):
        for r in range(P):
            cur = grid[r][t]
            if cur < 0 or (cur // M) % 3 == 2:
                heads = []
                for lane in (3 * r, 3 * r + 1, 3 * r + 2,
                             3 * (S - 1 - r), 3 * (S - 1 - r) + 1, 3 * (S - 1 - r) + 2):
                    if nxt[lane] < M and when[lane * M + nxt[lane]] > t:
                        heads.append(lane * M + nxt[lane])
                heads.sort(key=when.__getitem__)
                m = mem[r]
                for c in heads:
                    kind = (c // M) % 3
                    if (cur >= 0 and kind != 1) or not ready(c, t):
                        continue
                    k = when[c]
                    if cur < 0:  # fill the empty slot; an F holds memory from t on
                        if kind == 0 and max(m[t:k]) + 1 > cap:
                            continue
                        grid[r][k], grid[r][t], when[c] = -1, c, t
                        for x in range(t, k) if kind == 0 else \
                                range(t + 1, k + 1) if kind == 2 else ():
                            m[x] += 1 if kind == 0 else -1
                    else:  # the I takes the W's slot; the W waits, holding memory until k
                        if max(m[t + 1:k + 1]) + 1 > cap:
                            continue
                        grid[r][k], grid[r][t] = cur, c
                        when[c], when[cur] = t, k
                        for x in range(t + 1, k + 1):
                            m[x] += 1
                    break
            if grid[r][t] >= 0:
                nxt[grid[r][t] // M] += 1
    rows: list[list[int]] = [[c for c in g if c >= 0] for g in grid]
    return rows


def build_from_block(block: Block, M: int, cap: int, *, rounds: int = 6,
                     grid_limit: int = 3_000) -> tuple[list[list[Action]], int]:
    """Repeat ``block`` for M micro-batches and reorder it under ``cap``
    chunk-activations per rank (at least the block's peak). Returns the rank
    orders and their span in slots: ``list_reorder``'s, or, for schedules of
    at most ``grid_limit`` passes, ``compact``'s (repeated at most ``rounds``
    times) where that is shorter."""
    P = block.P
    rows = rank_codes(block, M)
    best, best_span = list_reorder(P, M, rows, cap)
    if 6 * P * M <= grid_limit:
        when, span = _squeeze(P, M, rows)
        for _ in range(rounds):
            trial = compact(P, M, list(when), cap)
            t_when, t_span = _squeeze(P, M, trial)
            if t_span >= span:
                break
            rows, when, span = trial, t_when, t_span
        if span < best_span:
            best, best_span = rows, span
    return _actions(best, M), best_span


def unit_time(schedule: Schedule) -> float:
    """The step of ``schedule`` when every action takes one slot."""
    return max(replay(schedule, lambda r, a: 1.0).ends, default=0.0)
