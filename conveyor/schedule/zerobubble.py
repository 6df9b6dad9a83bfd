"""Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR
2024): the backward is split into I (input gradient, on the critical path) and
W (weight gradient, free to move), and W fills what would be bubble.

zb-h1 and zb-h2 are the paper's handcrafted one-stage-per-rank shapes, written
as a warm-up of forwards, a steady part of F-I pairs with each rank's W's held
back by a fixed count, and a drain. zbv uses the V placement (stages r and
2P-1-r on rank r) with orders from the list scheduler.
"""

from __future__ import annotations

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
    """ZB-V: two chunks per rank in a V (stage r and 2P-1-r on rank r), the
    backward split. Order: the list scheduler under equal unit costs, the later
    chunk first, at most 2P chunk-activations per rank (P micro-batches of a
    whole rank's layers, 1F1B's stage-0 peak). Any M >= 1."""
    check_counts(P, M)
    place = v_placement(P)
    S = 2 * P
    unit = {k: [1.0] * S for k in ("F", "B", "I", "W")}
    rows, _ = list_schedule(P, M, place, unit, [0.0] * (S - 1),
                            Policy(split=True, cap=(2 * P,) * P))
    return Schedule("zbv", P, M, tuple(map(tuple, rows)), place)
