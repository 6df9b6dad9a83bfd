"""Which layers go to which stage: counting only, no torch.

The seed's rule (Step 1): with L layers and S stages, k = L/S, and stage s
(counting from 0) holds layers s*k .. (s+1)*k - 1, a contiguous block. When S
does not divide L, the remainder r = L mod S is spread one layer each over the
FIRST r stages, so stage sizes differ by at most one and the larger stages come
first. Why the first: the last stage also evaluates the loss, so giving the
spare layers to the early stages keeps the pipeline closer to balanced.

A balance is a list of layer counts, one per stage (torchgpipe's word). This
module turns (L, S) into the uniform balance, checks a user's balance, and turns
a balance into layer ranges. A cost-aware solver (an optimal split under
per-layer costs) belongs here as well; the runtime only consumes balances.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

from conveyor.checks import check_int
from conveyor.errors import PartitionError

__all__ = ["uniform_balance", "check_balance", "stage_ranges", "resolve_balance",
           "balanced_partition", "bottleneck", "placed_partition", "rank_loads"]


def uniform_balance(L: int, S: int) -> list[int]:
    """The seed's split of L layers into S contiguous stages.

    Returns S layer counts summing to L: k = L // S each, plus one more on each
    of the first L % S stages. ``uniform_balance(18, 4) == [5, 5, 4, 4]``.

    Raises PartitionError when L < S (some stage would be empty).
    """
    check_int(S, "number of stages", error=PartitionError)
    check_int(L, "number of layers", at_least=0, error=PartitionError)
    if L < S:
        raise PartitionError(
            f"cannot split {L} layer{'s' if L != 1 else ''} into {S} stages: every stage needs "
            f"at least one layer; use at most {L} stages (P*v <= L) or a model with at least "
            f"{S} layers")
    k, r = divmod(L, S)
    return [k + 1 if s < r else k for s in range(S)]


def check_balance(balance: Sequence[int], L: int, S: int | None = None) -> list[int]:
    """Check a user's balance against L layers (and S stages, when given).

    Returns it as a list of ints. Raises PartitionError naming the numbers when
    an entry is not a positive integer (an empty stage), when there are not S
    entries, or when the entries do not sum to L.
    """
    try:
        balance = list(balance)
    except TypeError:
        raise PartitionError(f"balance must be a list of layer counts, one per stage, "
                             f"got {balance!r}") from None
    if S is not None and len(balance) != S:
        raise PartitionError(
            f"balance {balance} has {len(balance)} entries but the pipeline has {S} stages; "
            f"give one layer count per stage")
    for s, n in enumerate(balance):
        if isinstance(n, bool) or not isinstance(n, int):
            raise PartitionError(f"balance {balance}: entry {s} is {n!r}, not an integer "
                                 f"layer count")
        if n < 1:
            raise PartitionError(
                f"balance {balance} leaves stage {s} empty ({n} layers); every stage needs at "
                f"least one layer: move a layer into stage {s} or use fewer stages")
    total = sum(balance)
    if total != L:
        raise PartitionError(
            f"balance {balance} sums to {total} but the model has {L} layers; "
            f"make the counts add up to {L}")
    return balance


def resolve_balance(L: int, S: int, balance: Sequence[int] | None = None) -> list[int]:
    """``balance`` checked against (L, S), or the uniform balance when it is None."""
    if balance is None:
        return uniform_balance(L, S)
    return check_balance(balance, L, S)


def stage_ranges(balance: Sequence[int]) -> list[range]:
    """Layer index ranges per stage: ``[5, 5, 4] -> [range(0, 5), range(5, 10), range(10, 14)]``."""
    out, start = [], 0
    for n in balance:
        out.append(range(start, start + n))
        start += n
    return out


# -- cost-aware split ------------------------------------------------------------
# Costs come per layer; a stage's time is the sum of its layers'. The solver
# minimises the slowest stage (the bottleneck) exactly: it bisects on the
# bottleneck T and asks "can L layers be cut into S stages, each at most T and
# each fitting its memory?", which a reachability sweep answers in O(S*L).

def _prefix(values: Sequence[float]) -> list[float]:
    out = [0.0]
    for x in values:
        out.append(out[-1] + x)
    return out


def bottleneck(times: Sequence[float], balance: Sequence[int]) -> float:
    """The largest stage time of ``balance`` under per-layer ``times``."""
    return max(sum(times[r.start:r.stop]) for r in stage_ranges(balance))


def _sweep(pre: list[float], S: int, T: float, fits) -> list[tuple[list[bool], list[int]]]:
    """Per stage s: (reach, lo). reach[b]: layers 0..b-1 can be cut into stages
    0..s, each taking at most T and fitting. lo[b]: the first layer a block of
    stage s ending at b may start from.

    ``fits(s, a, b)`` says whether layers a..b-1 fit stage s; it must be
    monotone (a block that fits keeps fitting when layers leave either end),
    so lo[b] never decreases with b and one pointer sweeps each stage.
    Stops early (shorter list) once nothing is reachable.
    """
    L = len(pre) - 1
    eps = 1e-12 * max(1.0, abs(T))
    reach = [True] + [False] * L
    out = []
    for s in range(S):
        count = [0] * (L + 2)  # count[a]: reachable ends among 0..a-1
        for a in range(L + 1):
            count[a + 1] = count[a] + reach[a]
        nxt, lo = [False] * (L + 1), [0] * (L + 1)
        a = 0
        for b in range(1, L + 1):
            while a < b and (pre[b] - pre[a] > T + eps or (fits is not None and not fits(s, a, b))):
                a += 1
            lo[b] = a
            nxt[b] = a < b and count[b] - count[a] > 0
        out.append((nxt, lo))
        reach = nxt
        if not any(reach):
            break
    return out


def _greedy_under(pre: list[float], S: int, T: float) -> list[int] | None:
    """Without memory checks, the greedy cut (each stage takes as many layers as
    fit under T, leaving one for each later stage) is feasible whenever any
    split is: O(L) instead of the sweep's O(S*L)."""
    L = len(pre) - 1
    eps = 1e-12 * max(1.0, abs(T))
    bal, a = [], 0
    for s in range(S):
        b = a + 1
        if pre[b] - pre[a] > T + eps:
            return None
        last = L - (S - s - 1)
        while b < last and pre[b + 1] - pre[a] <= T + eps:
            b += 1
        bal.append(b - a)
        a = b
    return bal if a == L else None


def _split_under(pre: list[float], S: int, T: float, fits) -> list[int] | None:
    """A balance whose every stage takes at most T and fits, or None."""
    if fits is None:
        return _greedy_under(pre, S, T)
    L = len(pre) - 1
    sweep = _sweep(pre, S, T, fits)
    if len(sweep) < S or not sweep[-1][0][L]:
        return None
    ends, b = [L], L
    for s in range(S - 1, 0, -1):  # walk back through reachable starts
        prev_reach = sweep[s - 1][0]
        b = next(a for a in range(b - 1, sweep[s][1][b] - 1, -1) if prev_reach[a])
        ends.append(b)
    ends.append(0)
    ends.reverse()
    return [ends[i + 1] - ends[i] for i in range(S)]


def balanced_partition(times: Sequence[float], S: int, *, fits=None,
                       what: str = "time") -> list[int]:
    """The contiguous split of L layers into S stages with the smallest bottleneck.

    ``times[j]``: cost of layer j (e.g. its forward plus backward time).
    ``fits(s, a, b) -> bool``: optional memory check, whether layers a..b-1
    fit stage s; it must be monotone (see ``_sweep``).

    Returns S layer counts (a balance). Exact: no contiguous split has a
    smaller largest stage sum (up to a relative 1e-12), and among the memory-
    feasible splits it is optimal too. Raises PartitionError when L < S, a
    time is negative, or no split fits (naming the stage and what to change).
    """
    check_int(S, "number of stages", error=PartitionError)
    times = [float(t) for t in times]
    L = len(times)
    uniform_balance(L, S)  # raises for L < S
    bad = [j for j, t in enumerate(times) if not t >= 0 or t == float("inf")]
    if bad:
        raise PartitionError(f"layer {bad[0]} has {what} {times[bad[0]]!r}; per-layer costs "
                             f"must be finite numbers >= 0")
    pre = _prefix(times)
    hi = pre[-1]
    best = _split_under(pre, S, hi, fits)
    if best is None:
        raise PartitionError(_no_fit_message(pre, S, fits))
    lo = max(max(times), pre[-1] / S)
    lo_ok = _split_under(pre, S, lo, fits)
    if lo_ok is not None:
        return lo_ok
    # Bisect: lo infeasible, hi feasible. Each feasible T gives a split whose
    # bottleneck is one of the block sums, so jump hi down to that value.
    hi = bottleneck(times, best)
    for _ in range(200):
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
        mid = (lo + hi) / 2
        got = _split_under(pre, S, mid, fits)
        if got is None:
            lo = mid
        else:
            best, hi = got, bottleneck(times, got)
    return best


def _no_fit_message(pre: list[float], S: int, fits) -> str:
    L = len(pre) - 1
    sweep = _sweep(pre, S, float("inf"), fits)
    if len(sweep) < S:
        s = len(sweep) - 1
        return (f"no split of {L} layers into {S} stages fits the memory limit: stage {s} "
                f"cannot hold any block that the stages before it leave; raise the memory "
                f"limit, use more stages, or checkpoint activations")
    return (f"no split of {L} layers into {S} stages fits the memory limit (the last "
            f"stage cannot hold the layers left to it); raise the memory limit, use more "
            f"stages, or checkpoint activations")


# -- several stages per rank -------------------------------------------------------
# With v chunks per rank (interleaved, V-shaped placements) a rank's time is the
# sum of its stages', so the split should minimise the largest rank total, not
# the largest stage. Bisection on that total T again; feasibility ("can the
# stages, in order, be cut so every rank's total stays within T?") is a
# depth-first search over each stage's end, largest block first, that prunes
# when the layers left exceed the room left on the ranks still to come, and
# remembers the (stage, start, loads) states that failed.

class _Budget(Exception):
    pass


def rank_loads(times: Sequence[float], balance: Sequence[int], placement: Sequence[int]
               ) -> list[float]:
    """Per rank, the summed time of the stages ``placement`` puts on it."""
    loads = [0.0] * (max(placement) + 1)
    for s, r in enumerate(stage_ranges(balance)):
        loads[placement[s]] += sum(times[r.start:r.stop])
    return loads


def _placed_under(pre: list[float], placement: Sequence[int], T: float, fits,
                  budget: list[int]) -> list[int] | None:
    """A balance whose rank totals all stay within T (and whose blocks fit), or
    None. Raises _Budget once ``budget[0]`` search nodes are spent."""
    L, S = len(pre) - 1, len(placement)
    eps = 1e-12 * max(1.0, abs(T))
    future = [sorted(set(placement[s:])) for s in range(S)]  # ranks with stages s..S-1
    loads = [0.0] * (max(placement) + 1)
    ends: list[int] = [0] * S
    failed: set = set()

    def rec(s: int, a: int) -> bool:
        if s == S:
            return a == L
        key = (s, a, tuple(loads[q] for q in future[s]))
        if key in failed:
            return False
        budget[0] -= 1
        if budget[0] < 0:
            raise _Budget
        r = placement[s]
        if pre[L] - pre[a] <= sum(T - loads[q] for q in future[s]) + eps:
            room = T - loads[r] + eps
            top = L if s == S - 1 else L - (S - s - 1)
            lo = top if s == S - 1 else a + 1
            # times are >= 0, so pre is sorted: skip the ends past the room at once
            for b in range(min(top, bisect_right(pre, pre[a] + room) - 1), lo - 1, -1):
                if fits is not None and not fits(s, a, b):
                    continue
                old = loads[r]
                loads[r] = old + pre[b] - pre[a]
                ok = rec(s + 1, b)
                loads[r] = old
                if ok:
                    ends[s] = b
                    return True
        failed.add(key)
        return False

    if not rec(0, 0):
        return None
    starts = [0] + ends[:-1]
    return [b - a for a, b in zip(starts, ends)]


def placed_partition(times: Sequence[float], placement: Sequence[int], *, fits=None,
                     budget: int = 100_000) -> tuple[list[int], bool]:
    """The contiguous split of L layers into S = len(placement) stages that
    minimises the largest rank total, stage s running on rank placement[s].

    ``fits`` as in ``balanced_partition``. Returns (balance, exact): exact is
    False when the search spent ``budget`` nodes before closing the gap, and
    the balance is then the best found (never worse than the min-bottleneck
    split). Raises PartitionError as ``balanced_partition`` does.
    """
    S = len(placement)
    best = balanced_partition(times, S, fits=fits)
    times = [float(t) for t in times]
    pre = _prefix(times)
    hi = max(rank_loads(times, best, placement))
    lo = max(pre[-1] / len(set(placement)), max(times))
    left = [budget]
    for _ in range(200):
        if hi - lo <= 1e-12 * max(1.0, hi):
            return best, True
        mid = (lo + hi) / 2
        try:
            got = _placed_under(pre, placement, mid, fits, left)
        except _Budget:
            return best, False
        if got is None:
            lo = mid
        else:
            best, hi = got, max(rank_loads(times, got, placement))
    return best, True
