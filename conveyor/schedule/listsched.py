"""A list scheduler: build a rank order by simulating the pipeline and letting
each free rank pick, among the actions it could start now, the one a policy
prefers. The zero-bubble generators and ``zb-auto`` are policies over it.

The order it returns replays (``conveyor.schedule.deps.replay``) to the same
times under the same costs, because it never idles a rank that has an action
it may start. Deadlock-free by construction: an action is chosen only once
its inputs exist.

Index letters as in ``conveyor.schedule.ir``; ``cap[r]`` bounds rank r's
in-flight chunk-activations (forward done, weight gradient not yet done).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

from conveyor.schedule.ir import B, F, I, W, Action

__all__ = ["Policy", "list_schedule", "Stalled"]


@dataclass(frozen=True)
class Policy:
    """How a free rank chooses.

    split:     split the backward into I and W (else one B).
    cap:       most chunk-activations held per rank (index r). A micro-batch
               is admitted to a rank (its forward on the rank's first stage)
               only when the cap has room for all its chunks there, so a
               rank never fills its cap with early chunks and stalls.
    late_first: among forwards (and among backwards), prefer the later stage.
    w_first_at: run a pending W before a forward once the rank holds this many
               chunk-activations (None: W only when nothing else can run).
    reserve:   admit a micro-batch only with room for all its chunks (never
               stalls); False admits while any room is left, which can fill a
               rank with early chunks and raise Stalled, but is sometimes
               shorter.
    """

    split: bool
    cap: tuple[int, ...]
    late_first: bool = True
    w_first_at: tuple[int, ...] | None = None
    reserve: bool = True


def list_schedule(P: int, M: int, placement: Sequence[int], costs: dict[str, Sequence[float]],
                  link: Sequence[float], policy: Policy) -> tuple[list[list[Action]], float]:
    """Per-rank compute orders and their makespan under ``costs``.

    costs: ``{kind: [time of stage s]}`` for F, B, I, W; link[c]: time to
    cross cut c (between stage c and c+1). Returns (rows, makespan).
    """
    S = len(placement)
    stages = [[s for s in range(S) if placement[s] == r] for r in range(P)]
    if policy.late_first:
        stages = [list(reversed(x)) for x in stages]
    nxt_f = [0] * S           # next micro-batch to forward, per stage
    nxt_b = [0] * S           # next micro-batch to backward (I or B), per stage
    pend_w: list[list[int]] = [[] for _ in range(S)]  # I done, W not yet
    f_ready = [[None] * M for _ in range(S)]  # time the input of F(s, mb) is there
    b_ready = [[None] * M for _ in range(S)]  # time the output gradient of (s, mb) is there
    for mb in range(M):
        f_ready[0][mb] = 0.0
    held = [0] * P
    committed = [0] * P  # held, plus the chunks admitted micro-batches will still add
    first = [min(st) if st else -1 for st in stages]
    k = [len(st) for st in stages]
    rows: list[list[Action]] = [[] for _ in range(P)]
    left = [len(st) * M * (3 if policy.split else 2) for st in stages]
    # Heap entries (time, seq, rank, version): a rank's newer entry makes its
    # older ones stale. A rank that cannot start anything sleeps until its
    # next known input arrives; a decision that sends it an earlier input
    # moves its wake-up forward.
    version = [0] * P
    heap = [(0.0, r, r, 0) for r in range(P) if left[r]]
    heapq.heapify(heap)
    seq = P
    makespan = 0.0
    decisions = 0
    retried: dict[int, tuple[float, int]] = {}  # rank -> (time, decisions) of its same-time retry
    sleeping: dict[int, float] = {}  # rank -> when it wakes (inf: on a new input)

    def _wake(q: int, when: float) -> None:
        if when < sleeping.get(q, -1.0):
            sleeping[q] = when
            push(q, when)

    def push(q: int, when: float) -> None:
        nonlocal seq
        version[q] += 1
        heapq.heappush(heap, (when, seq, q, version[q]))
        seq += 1

    while heap:
        t, _, r, ver = heapq.heappop(heap)
        if ver != version[r]:
            continue
        sleeping.pop(r, None)
        room = (policy.cap[r] - committed[r] >= k[r]) if policy.reserve \
            else held[r] < policy.cap[r]
        choice = _choose(r, t, stages[r], policy, held[r], room, first[r], nxt_f, nxt_b,
                         pend_w, f_ready, b_ready, M)
        if choice is None:
            # Another rank deciding at this same time may hand r an input:
            # look again after it, once.
            if heap and heap[0][0] <= t and retried.get(r) != (t, decisions):
                retried[r] = (t, decisions)
                push(r, t)
                continue
            later = [x for x in _input_times(stages[r], nxt_f, nxt_b, f_ready, b_ready, M)
                     if x > t]
            wake = min(later, default=math.inf)
            if later:
                push(r, wake)
            sleeping[r] = wake
            continue
        decisions += 1
        s, kind = choice
        if kind == F:
            mb = nxt_f[s]
            nxt_f[s] += 1
            held[r] += 1
            if s == first[r]:
                committed[r] += k[r]
        elif kind == W:
            mb = pend_w[s].pop(0)
            held[r] -= 1
            committed[r] -= 1
        else:
            mb = nxt_b[s]
            nxt_b[s] += 1
            if kind == I:
                pend_w[s].append(mb)
            else:
                held[r] -= 1
                committed[r] -= 1
        end = t + costs[kind][s]
        rows[r].append(Action(s, kind, mb))
        if kind == F:
            if s + 1 < S:
                f_ready[s + 1][mb] = arrive = end + (link[s] if placement[s + 1] != r else 0.0)
                _wake(placement[s + 1], arrive)
            else:
                b_ready[s][mb] = end  # the loss gradient is there once F is
        elif kind != W and s > 0:
            b_ready[s - 1][mb] = arrive = end + (link[s - 1] if placement[s - 1] != r else 0.0)
            _wake(placement[s - 1], arrive)
        makespan = max(makespan, end)
        left[r] -= 1
        if left[r]:
            push(r, end)
    if any(left):
        r = next(r for r in range(P) if left[r])
        raise Stalled(r, makespan)
    return rows, makespan


def _choose(r, t, stages, policy, held, room, first, nxt_f, nxt_b, pend_w, f_ready, b_ready,
            M):
    back = I if policy.split else B
    eps = 1e-12
    for s in stages:  # a backward first: it frees memory and feeds the rank before
        mb = nxt_b[s]
        if mb < nxt_f[s] and b_ready[s][mb] is not None and b_ready[s][mb] <= t + eps:
            return s, back
    want_w = policy.split and policy.w_first_at is not None and held >= policy.w_first_at[r]
    if want_w:
        for s in reversed(stages):
            if pend_w[s]:
                return s, W
    for s in stages:  # a later chunk's forward was reserved when its micro-batch came in
        mb = nxt_f[s]
        if mb < M and f_ready[s][mb] is not None and f_ready[s][mb] <= t + eps \
                and (room if (s == first or not policy.reserve) else True):
            return s, F
    if policy.split:
        for s in reversed(stages):
            if pend_w[s]:
                return s, W
    return None


def _input_times(stages, nxt_f, nxt_b, f_ready, b_ready, M):
    """Known arrival times of the inputs of the rank's next actions."""
    for s in stages:
        mb = nxt_b[s]
        if mb < nxt_f[s] and b_ready[s][mb] is not None:
            yield b_ready[s][mb]
        mb = nxt_f[s]
        if mb < M and f_ready[s][mb] is not None:
            yield f_ready[s][mb]


class Stalled(Exception):
    """Every rank waits: the caps are too small for this placement."""

    def __init__(self, r: int, t: float):
        super().__init__(f"rank {r} stalled at time {t}")
