"""DualPipeV (DeepSeek-AI, DualPipe README; the "cut-in-half" V of Sea AI Lab):
two chunks per rank in a V, stage r ("phase 0") and stage 2P-1-r ("phase 1")
on rank r. Its phases, as named in DeepSeek's reference, on rank r of P with
M micro-batches:

1. 2(P-r-1) forwards of phase 0;
2. r+1 times: F phase 0, F phase 1;
3. P-r-1 times: I and W of phase 1 (split), F phase 1;
4. main, M-2P+r+1 times: F phase 0 & B phase 1, then F phase 1 & B phase 0;
5. P-r-1 times: B phase 1, then F phase 1 & B phase 0;
6. r+1 times: B phase 1, B phase 0, split into I (W held back) from the half-way point;
7. P-r-1 times: W, then I of phase 0 (W held back);
8. the remaining W's.

"X & Y" is a pair DualPipe overlaps in one fused kernel; without one conveyor
runs the two back to back (F then B), and the order keeps them adjacent so a
fused pair can replace them. The reference needs M >= 2P; for smaller M the
generator builds the order for 2P micro-batches and drops those >= M, which
keeps it valid (dropping whole micro-batches cannot create a wait cycle) with
a larger bubble.
"""

from __future__ import annotations

from conveyor.schedule.ir import B, F, I, W, Action, Schedule, check_counts, v_placement

__all__ = ["dualpipev"]


def dualpipev(P: int, M: int) -> Schedule:
    """DualPipeV's order for P ranks (2P stages) and any M >= 1."""
    check_counts(P, M)
    Mv = max(M, 2 * P)
    rows = tuple(tuple(a for a in _rank(P, Mv, r) if a.mb < M) for r in range(P))
    return Schedule("dualpipev", P, M, rows, v_placement(P), meta={"v": 2})


def _rank(P: int, M: int, r: int) -> list[Action]:
    stage = (r, 2 * P - 1 - r)        # phase -> stage
    nf, nb = [0, 0], [0, 0]           # next micro-batch per phase
    held: list[Action] = []           # W's held back, oldest first
    out: list[Action] = []

    def fwd(ph):
        out.append(Action(stage[ph], F, nf[ph]))
        nf[ph] += 1

    def bwd(ph, split=False):
        s, mb = stage[ph], nb[ph]
        nb[ph] += 1
        if split:
            out.append(Action(s, I, mb))
            held.append(Action(s, W, mb))
        else:
            out.append(Action(s, B, mb))

    def weight():
        out.append(held.pop(0))

    for _ in range(2 * (P - r - 1)):                 # 1
        fwd(0)
    for _ in range(r + 1):                           # 2
        fwd(0)
        fwd(1)
    for _ in range(P - r - 1):                       # 3
        bwd(1, split=True)
        weight()
        fwd(1)
    for _ in range(M - 2 * P + r + 1):               # 4
        fwd(0)
        bwd(1)
        fwd(1)
        bwd(0)
    for _ in range(P - r - 1):                       # 5
        bwd(1)
        fwd(1)
        bwd(0)
    split = False                                    # 6
    for i in range(r + 1):
        if i == (r + 1) // 2 and r % 2 == 1:
            split = True
        bwd(1, split)
        if i == (r + 1) // 2 and r % 2 == 0:
            split = True
        bwd(0, split)
    for _ in range(P - r - 1):                       # 7
        weight()
        bwd(0, split=True)
    while held:                                      # 8
        weight()
    return out
