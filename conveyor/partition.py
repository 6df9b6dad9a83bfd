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

from typing import Sequence

from conveyor.checks import check_int
from conveyor.errors import PartitionError

__all__ = ["uniform_balance", "check_balance", "stage_ranges", "resolve_balance"]


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
