"""Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR
2024): the backward is split into I (input gradient, on the critical path) and
W (weight gradient, free to move), and W fills what would be bubble.

zb-h1 and zb-h2 are the paper's handcrafted one-stage-per-rank shapes, written
as a warm-up of forwards, a steady part of F-I pairs with each rank's W's held
back by a fixed count, and a drain. zbv uses the V placement (stages r and
2P-1-r on rank r) with orders from the list scheduler.
"""

from __future__ import annotations

from conveyor.schedule.deps import replay
from conveyor.schedule.ir import F, I, W, Action, Schedule, check_counts, v_placement
from conveyor.schedule.listsched import Policy, list_schedule

__all__ = ["zb_h1", "zb_h2", "zbv", "held_back"]


def held_back(P: int, M: int, warm: list[int], defer: list[int], name: str) -> Schedule:
    """One stage per rank: rank r runs ``warm[r]`` forwards, then F-I pairs,
    each followed by the W that is ``defer[r]`` backwards old (W's in order),
    then the remaining I's and W's. Holds at most warm[r] + 1 + defer[r]
    micro-batches on rank r."""
    rows = []
    for r in range(P):
        w, d = min(M, warm[r]), defer[r]
        row = [Action(r, F, mb) for mb in range(w)]
        n_i = n_w = 0
        for k in range(M - w):
            row += [Action(r, F, w + k), Action(r, I, n_i)]
            n_i += 1
            if k >= d:
                row.append(Action(r, W, n_w))
                n_w += 1
        while n_i < M:
            row.append(Action(r, I, n_i))
            n_i += 1
            if n_i - n_w > d:
                row.append(Action(r, W, n_w))
                n_w += 1
        row += [Action(r, W, mb) for mb in range(n_w, M)]
        rows.append(tuple(row))
    return Schedule(name, P, M, tuple(rows))


def zb_h1(P: int, M: int) -> Schedule:
    """ZB-H1: 1F1B's warm-up (P-1-r forwards on rank r), with rank r holding
    back r weight gradients, which fill the drain. Every rank holds at most P
    micro-batches (1F1B's peak, on every rank). Any M >= 1; the formula's bubble
    needs M >= P."""
    check_counts(P, M)
    return held_back(P, M, [P - 1 - r for r in range(P)], list(range(P)), "zb-h1")


def zb_h2(P: int, M: int) -> Schedule:
    """ZB-H2: 2(P-1-r) warm-up forwards on rank r and 2r held-back weight
    gradients, so the warm-up and the drain are filled; up to 2P-1 micro-batches
    per rank. Any M >= 1; the formula's bubble needs M >= 2P-1."""
    check_counts(P, M)
    return held_back(P, M, [2 * (P - 1 - r) for r in range(P)], [2 * r for r in range(P)],
                     "zb-h2")


def zbv(P: int, M: int) -> Schedule:
    """ZB-V (Qi et al. 2024): two chunks per rank in a V (stage r, "chunk 0",
    and stage 2P-1-r, "chunk 1", on rank r), the backward split. Phases on
    rank r, as in the paper's figure:

    1. 2(P-r)-1 forwards of chunk 0;
    2. r times: F chunk 1, F chunk 0;
    3. P-r times: F, I, W of chunk 1;
    4. steady: F, I, W of chunk 0, then F, I, W of chunk 1, until all are in;
    5. r times: I chunk 0, I chunk 1 (their W's held back);
    6. P-r times: I and W of chunk 0;
    7. the held-back W's, chunk 1's first.

    At most 2P chunk-activations per rank (P micro-batches of a whole rank's
    layers, 1F1B's peak). The shape needs M >= 2P-1; for fewer, the order
    for 2P-1 is built and the missing micro-batches are dropped, which keeps
    it valid. Then the list scheduler's order (equal unit costs, 2P chunks)
    is used where it is shorter under equal costs: it does not wait for
    micro-batches that do not exist.
    """
    check_counts(P, M)
    place = v_placement(P)
    n = max(M, 2 * P - 1)
    rows = tuple(tuple(a for a in _zbv_rank(P, n, r) if a.mb < M) for r in range(P))
    shaped = Schedule("zbv", P, M, rows, place)
    if M >= 2 * P - 1:
        return shaped
    S = 2 * P
    unit = {k: [1.0] * S for k in ("F", "B", "I", "W")}
    listed, t_list = list_schedule(P, M, place, unit, [0.0] * (S - 1),
                                   Policy(split=True, cap=(2 * P,) * P))
    t_shaped = max(replay(shaped, lambda r, a: 1.0).end.values())
    if t_list < t_shaped:
        return Schedule("zbv", P, M, tuple(map(tuple, listed)), place)
    return shaped


def _zbv_rank(P: int, M: int, r: int) -> list[Action]:
    c0, c1 = r, 2 * P - 1 - r
    nf = {c0: 0, c1: 0}
    ni = {c0: 0, c1: 0}
    nw = {c0: 0, c1: 0}
    out: list[Action] = []

    def act(s, kind):
        count = {F: nf, I: ni, W: nw}[kind]
        out.append(Action(s, kind, count[s]))
        count[s] += 1

    for _ in range(2 * (P - r) - 1):                     # 1
        act(c0, F)
    for _ in range(r):                                   # 2
        act(c1, F)
        act(c0, F)
    def whole(s):  # F, I and W of the next micro-batch of stage s, back to back
        act(s, F)
        act(s, I)
        act(s, W)

    for _ in range(P - r):                               # 3
        whole(c1)
    while nf[c1] < nf[c0] or nf[c0] < M:                 # 4
        if nf[c0] < M:
            act(c0, F)
        act(c0, I)
        act(c0, W)
        whole(c1)
    for _ in range(r):                                   # 5
        act(c0, I)
        act(c1, I)
    for _ in range(P - r):                               # 6
        act(c0, I)
        act(c0, W)
    while nw[c1] < ni[c1]:                               # 7
        act(c1, W)
    while nw[c0] < ni[c0]:
        act(c0, W)
    return out
