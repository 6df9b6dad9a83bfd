"""A decode schedule is a schedule too: prefill, then token steps, in lanes.

Generating from a model cut into S stages: each lane (a micro-batch of
sequences) first runs its prompt through every stage (the prefill, in
``chunks`` pieces when the prompt is long), then one forward per new token;
the last stage samples the token and sends it back to stage 0, which embeds
it for the next step. The loop from the last stage to the first is the one
thing a training schedule does not have; it unrolls into a chain:

    virtual stage  k*S + s  =  real stage s in round k
    round k        0 .. chunks-1: the prefill chunks; chunks-1+t: token step t

so round k's stage S-1 feeds round k+1's stage 0 over an ordinary cut (the
"loop cut", from the last stage's rank to the first's). A decode schedule is
then a forward-only Schedule of S*K virtual stages (K = chunks + new_tokens
- 1 rounds) placed ``placement[vs % S]``, with one micro-batch per lane:
the validator, the lowering, the simulator and every view take it as it is.

Each rank runs its actions in (virtual stage, lane) order: for every round,
every lane. With M lanes in flight a rank works on lane l while the others
are further down the chain, so P ranks keep busy once M >= P; at M = 1 each
rank works one round in P, idle (P-1)/P of the time (the seed's bubble, for
inference).

What the loop costs a prefill chunk: chunk c+1 enters stage 0 after chunk c
left the last stage (the unrolled chain has one way in), so a lane's chunks
do not overlap one another; other lanes fill those gaps when M >= P.

No torch: the simulator and the views use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from conveyor.checks import check_int
from conveyor.errors import ScheduleError
from conveyor.limits import MAX_S, check_size
from conveyor.schedule.deps import paused_gc
from conveyor.schedule.ir import F, Action, Schedule

__all__ = ["DecodePlan", "decode_schedule", "decode_plan", "round_of"]

NAME = "decode"


@dataclass(frozen=True)
class DecodePlan:
    """The shape of a decode: S real stages on ``placement``, M lanes,
    ``chunks`` prefill rounds and ``new_tokens`` tokens per sequence.

    rounds:   K = chunks + new_tokens - 1 forwards per lane and stage (the
              last prefill chunk yields the first token).
    """

    placement: tuple[int, ...]
    P: int
    M: int
    chunks: int
    new_tokens: int

    @property
    def S(self) -> int:
        return len(self.placement)

    @property
    def rounds(self) -> int:
        return self.chunks + self.new_tokens - 1

    def as_dict(self) -> dict:
        return {"P": self.P, "M": self.M, "S": self.S, "chunks": self.chunks,
                "new_tokens": self.new_tokens, "placement": list(self.placement)}


def decode_plan(P: int, M: int, *, new_tokens: int, chunks: int = 1,
                placement: Sequence[int] | None = None) -> DecodePlan:
    """Check the numbers and return the plan. ScheduleError naming the value
    for a count that is not a positive integer, a placement outside the
    ranks, or more virtual stages than conveyor's bound (S x rounds <=
    MAX_S: fewer new tokens, or fewer prefill chunks)."""
    check_int(P, "P", what="pipeline ranks", error=ScheduleError)
    check_int(M, "M", what="lanes", error=ScheduleError)
    check_int(new_tokens, "new_tokens", what="tokens to generate", error=ScheduleError)
    check_int(chunks, "chunks", what="prefill chunks", error=ScheduleError)
    place = tuple(placement) if placement is not None else tuple(range(P))
    if not place or any(not 0 <= r < P for r in place) or set(place) != set(range(P)):
        raise ScheduleError(f"placement {list(place)} must put stages on ranks 0..{P - 1}, "
                            f"each rank holding at least one")
    plan = DecodePlan(place, P, M, chunks, new_tokens)
    if plan.S * plan.rounds > MAX_S:
        raise ScheduleError(
            f"a decode of {chunks} prefill chunk(s) and {new_tokens} new tokens over {plan.S} "
            f"stages unrolls into {plan.S * plan.rounds} virtual stages, beyond conveyor's bound "
            f"of {MAX_S}; generate at most {MAX_S // plan.S - chunks + 1} tokens per call")
    check_size(P, M, S=plan.S * plan.rounds)
    return plan


def round_of(vs: int, S: int) -> tuple[int, int]:
    """(real stage, round) of virtual stage ``vs``."""
    return vs % S, vs // S


def decode_schedule(P: int, M: int, *, new_tokens: int, chunks: int = 1,
                    placement: Sequence[int] | None = None) -> Schedule:
    """The compute-only decode schedule (lower it with ``add_comms``).

    P ranks, M lanes, ``chunks`` prefill rounds, ``new_tokens`` tokens per
    sequence, real stages on ``placement`` (default stage s on rank s).
    Out: a forward-only Schedule named "decode" with S x rounds virtual
    stages, meta["decode"] = the plan (``DecodePlan.as_dict``).
    """
    plan = decode_plan(P, M, new_tokens=new_tokens, chunks=chunks, placement=placement)
    S, K = plan.S, plan.rounds
    vplace = plan.placement * K
    rows: list[list[Action]] = [[] for _ in range(P)]
    with paused_gc():  # many small tuples, in a process that may hold a model
        for vs in range(S * K):  # (virtual stage, lane) order: every dependency comes first
            row = rows[vplace[vs]]
            for lane in range(M):
                row.append(Action(vs, F, lane))
        return Schedule(NAME, P, M, tuple(map(tuple, rows)), placement=vplace,
                        forward_only=True, meta={"decode": plan.as_dict()})
