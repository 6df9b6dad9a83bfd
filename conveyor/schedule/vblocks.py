"""V-shape building blocks (Qi et al., "Pipeline Parallelism with Controllable
Memory", NeurIPS 2024), the first step of the paper's framework: a block is
repeated, then squeezed and reordered (``conveyor.schedule.vreorder``).

A building block is where one micro-batch's passes sit in time, on a grid
where a chunk's F, I and W each take one slot. With the V placement rank r
holds stage r (chunk 0) and stage 2P-1-r (chunk 1), so it runs six passes per
micro-batch: F0, F1, I1, I0, W1, W0. Repeating the block every T = 6 slots
gives a pipeline with no idle slot in its steady state, provided no two
passes of a rank fall on the same slot modulo 6.

The paper's V blocks use uniform offsets: from rank r to r+1, chunk 0's
forward and chunk 1's input gradient move k slots later (the "down" passes),
while chunk 1's forward and chunk 0's input gradient, which travel back up,
follow one slot after the rank below. A chunk holds its activation from its
F to its W (its lifespan); the total lifespan on a rank is about
(P-1)(2k+2) + 4 slots, the same on every rank, and the steady state holds
about lifespan / 6 chunk-activations. So k sets the memory:

    k = 1: V-Min, about 2P/3 chunk-activations (P/3 micro-batches of a rank)
    k = 2: V-Half, about P chunk-activations (P/2 micro-batches)
    k = 5 (= -1 mod 6): the ZB-V level, 2P (1F1B's P micro-batches)

A block is fixed by k and the slots, modulo 6, of rank 0's F0, F1, I1 and I0
(F0 at 0); the other ranks' residues follow from the offsets, each pass sits
at the first slot with its residue after its input, and each W takes the
first free slot after its I (whichever of the two assignments of the two
free residues is shorter). ``blocks`` lists the collision-free ones.

Index letters as in ``conveyor.schedule.ir``; t is a slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

from conveyor.schedule.ir import F, I, W, Action

__all__ = ["Block", "blocks", "steady_peak", "repeat", "T"]

T = 6  # slots per micro-batch per rank: F, I and W of two chunks


@dataclass(frozen=True)
class Block:
    """One micro-batch's passes: ``slot[(s, kind)]`` for kind in F, I, W.

    k: the down offset; residues: rank 0's (F0, F1, I1, I0) modulo 6;
    peak: the most chunk-activations a rank holds in the steady state.
    """

    P: int
    k: int
    residues: tuple[int, int, int, int]
    slot: dict
    peak: int


def _next(x: int, res: int) -> int:
    """The smallest slot >= x that is ``res`` modulo T."""
    return x + (res - x) % T


def _block(P: int, k: int, residues) -> Block | None:
    f0, f1, i1, i0 = residues
    S = 2 * P
    per = []
    for r in range(P):
        d = ((f0 + k * r) % T, (f1 - r) % T, (i1 + k * r) % T, (i0 - r) % T)
        if len(set(d)) < 4:
            return None  # two passes of rank r collide when repeated
        per.append(d)
    slot: dict = {}
    x = -1
    for r in range(P):                       # F0 down the ranks
        x = _next(x + 1, per[r][0])
        slot[(r, F)] = x
    for r in reversed(range(P)):             # F1 back up
        x = _next(x + 1, per[r][1])
        slot[(S - 1 - r, F)] = x
    for r in range(P):                       # I1 (the loss is on rank 0) down
        x = _next(x + 1, per[r][2])
        slot[(S - 1 - r, I)] = x
    for r in reversed(range(P)):             # I0 back up
        x = _next(x + 1, per[r][3])
        slot[(r, I)] = x
    for r in range(P):
        free = [q for q in range(T) if q not in per[r]]
        c1, c0 = slot[(S - 1 - r, I)], slot[(r, I)]
        a = (_next(c1 + 1, free[0]), _next(c0 + 1, free[1]))
        b = (_next(c1 + 1, free[1]), _next(c0 + 1, free[0]))
        slot[(S - 1 - r, W)], slot[(r, W)] = a if sum(a) <= sum(b) else b
    return Block(P, k, tuple(residues), slot, steady_peak(P, slot))


def blocks(P: int, k: int) -> list[Block]:
    """Every collision-free V block with down offset k (1..5) for P ranks,
    in a fixed order (by rank 0's residues)."""
    out = []
    for rest in permutations(range(1, T), 3):
        b = _block(P, k, (0,) + rest)
        if b is not None:
            out.append(b)
    return out


def steady_peak(P: int, slot: dict) -> int:
    """Most chunk-activations a rank holds once the block repeats every T
    slots forever: chunk s of micro-batch j is held over slots
    [F + Tj, W + Tj] (released after its W)."""
    S, peak = 2 * P, 0
    for r in range(P):
        spans = [(slot[(s, F)], slot[(s, W)]) for s in (r, S - 1 - r)]
        far = T * (max(w for _, w in spans) // T + 2)  # a time in the steady state
        for tau in range(far, far + T):
            n = sum(max(0, (tau - f) // T - -((w - tau) // T) + 1) for f, w in spans)
            peak = max(peak, n)
    return peak


def repeat(block: Block, M: int) -> dict[Action, int]:
    """Micro-batch mb's passes at the block's slots + T*mb."""
    return {Action(s, kind, mb): t + T * mb for (s, kind), t in block.slot.items()
            for mb in range(M)}
