"""The schedule IR: actions, their text form, and per-rank action lists.

Index letters, used the same way everywhere in conveyor:
    P  pipeline ranks (processes)      r   a rank, 0 .. P-1
    S  stages (model chunks), S = P*v  s   a stage, 0 .. S-1
    M  micro-batches per step          mb  a micro-batch, 0 .. M-1
    v  chunks (stages) per rank

An action is one unit of work on one stage for one micro-batch. Its text form
is ``{s}{kind}{mb}``: ``2F5`` is the forward of micro-batch 5 on stage 2,
``0SEND_B3`` sends the input gradient of micro-batch 3 from stage 0. This is the
form torch.distributed.pipelining uses, so its CSV files read as they are.

A schedule is an ordered action list per rank plus the placement of stages on
ranks. Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

from conveyor.checks import check_int
from conveyor.errors import ScheduleError
from conveyor.limits import check_size

__all__ = [
    "F", "B", "I", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B",
    "KINDS", "COMPUTE_KINDS", "COMM_KINDS", "BACKWARD_KINDS",
    "Action", "Schedule", "loop_placement", "v_placement", "check_counts",
]

# Kinds are plain strings (not an Enum) so that an Action is a tuple of
# builtins and hashes in C: the simulator keys dicts by actions by the million.
F = "F"            # forward
B = "B"            # full backward (input and weight gradients together)
I = "I"            # backward for the input gradient only  # noqa: E741
W = "W"            # backward for the weight gradient only
SEND_F = "SEND_F"  # send stage s's output to stage s+1
RECV_F = "RECV_F"  # receive stage s's input from stage s-1
SEND_B = "SEND_B"  # send stage s's input gradient to stage s-1
RECV_B = "RECV_B"  # receive stage s's output gradient from stage s+1

COMPUTE_KINDS = (F, B, I, W)
COMM_KINDS = (SEND_F, RECV_F, SEND_B, RECV_B)
KINDS = COMPUTE_KINDS + COMM_KINDS
BACKWARD_KINDS = (B, I)  # the kinds that produce a stage's input gradient

_ACTION_RE = re.compile(r"^\s*(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|F|B|I|W)(\d+)\s*$")


class Action(NamedTuple):
    """One unit of work: ``kind`` on stage ``stage`` for micro-batch ``mb``."""

    stage: int
    kind: str
    mb: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.mb}"

    def __repr__(self) -> str:
        return f"Action({self})"

    @property
    def is_compute(self) -> bool:
        return self.kind in COMPUTE_KINDS

    @classmethod
    def parse(cls, text: str) -> "Action":
        """Read the text form, e.g. ``"2F5"`` or ``"0SEND_B3"``.

        Raises ScheduleError naming the text when it is not an action.
        """
        m = _ACTION_RE.match(text)
        if m is None:
            raise ScheduleError(
                f"not an action: {text!r}; write stage, kind and micro-batch, e.g. '2F5' "
                f"(kinds: {', '.join(KINDS)})")
        return cls(int(m.group(1)), m.group(2), int(m.group(3)))


def check_counts(P: int, M: int) -> None:
    """Raise ScheduleError unless P and M are positive integers within
    ``conveyor.limits`` (checked before anything is allocated by them)."""
    check_int(P, "P", what="number of pipeline ranks", error=ScheduleError)
    check_int(M, "M", what="number of micro-batches", error=ScheduleError)
    check_size(P, M)


def loop_placement(P: int, v: int = 1) -> tuple[int, ...]:
    """Stage s on rank s % P: ranks 0..P-1, then again 0..P-1 (interleaved)."""
    return tuple(s % P for s in range(P * v))


def v_placement(P: int) -> tuple[int, ...]:
    """Two chunks per rank, the second run back up: stage s and 2P-1-s share rank s."""
    return tuple(range(P)) + tuple(reversed(range(P)))


@dataclass(frozen=True)
class Schedule:
    """Per-rank ordered action lists for one training step.

    ``actions[r]`` is rank r's list, in execution order. ``placement[s]`` is the
    rank that holds stage s; its length is the number of stages S. A
    ``forward_only`` schedule (inference, the seed's first picture) has no
    backward actions. Construct freely; ``conveyor.schedule.validate`` checks
    the rules.
    """

    name: str
    P: int
    M: int
    actions: tuple[tuple[Action, ...], ...]
    placement: tuple[int, ...] = ()
    forward_only: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_counts(self.P, self.M)
        check_size(self.P, self.M, S=max(len(self.placement or ()), self.P))
        actions = tuple(tuple(a if type(a) is Action else Action(*a) for a in row)
                        for row in self.actions)
        object.__setattr__(self, "actions", actions)
        placement = tuple(self.placement) if self.placement else loop_placement(self.P)
        object.__setattr__(self, "placement", placement)
        if len(actions) != self.P:
            raise ScheduleError(
                f"schedule {self.name!r} has {len(actions)} rank rows but P={self.P}; "
                f"give one action list per rank")
        bad = [r for r in placement if not 0 <= r < self.P]
        if bad:
            raise ScheduleError(
                f"placement {list(placement)} names rank {bad[0]}, outside 0..{self.P - 1}")

    def __hash__(self) -> int:
        # Schedules key the planning caches (rankplan); hashing a million
        # actions takes ~50 ms, so the hash is computed once per object.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.P, self.M, self.actions, self.placement,
                      self.forward_only))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        # String hashes differ between processes: never carry one across, nor
        # the plans kept on the object (conveyor.schedule.rankplan).
        return {k: v for k, v in self.__dict__.items() if k not in ("_hash", "_memo")}

    # -- shape -------------------------------------------------------------
    @property
    def S(self) -> int:
        """Number of stages."""
        return len(self.placement)

    @property
    def v(self) -> int:
        """Chunks per rank (stages per rank when evenly placed)."""
        return self.S // self.P

    def rank_of(self, s: int) -> int:
        return self.placement[s]

    def stages_of(self, r: int) -> tuple[int, ...]:
        return tuple(s for s, rr in enumerate(self.placement) if rr == r)

    @property
    def has_comms(self) -> bool:
        return any(a.kind in COMM_KINDS for row in self.actions for a in row)

    @property
    def splits_backward(self) -> bool:
        """True when the backward is split into I and W actions (the planner
        charges such schedules the split costs)."""
        return any(a.kind in (I, W) for row in self.actions for a in row)

    def __iter__(self) -> Iterator[tuple[int, int, Action]]:
        """Yield (rank, step, action) over every action."""
        for r, row in enumerate(self.actions):
            for i, a in enumerate(row):
                yield r, i, a

    def __len__(self) -> int:
        return sum(len(row) for row in self.actions)

    # -- transforms ----------------------------------------------------------
    def replace(self, **changes) -> "Schedule":
        fields = dict(name=self.name, P=self.P, M=self.M, actions=self.actions,
                      placement=self.placement, forward_only=self.forward_only,
                      meta=dict(self.meta))
        fields.update(changes)
        return Schedule(**fields)

    def compute_only(self) -> "Schedule":
        """The same schedule with the communication actions removed."""
        return self.replace(actions=tuple(
            tuple(a for a in row if a.kind in COMPUTE_KINDS) for row in self.actions))

    def without_backward(self) -> "Schedule":
        """The forward-only (inference) view: F actions only, in the same order."""
        keep = (F, SEND_F, RECV_F)
        return self.replace(
            actions=tuple(tuple(a for a in row if a.kind in keep) for row in self.actions),
            forward_only=True)

    def text_rows(self) -> list[list[str]]:
        return [[str(a) for a in row] for row in self.actions]


def schedule_from_rows(name: str, rows: Sequence[Sequence[str]], *, M: int | None = None,
                       placement: Sequence[int] | None = None,
                       forward_only: bool = False) -> Schedule:
    """Build a schedule from text cells, one row per rank (empty cells skipped).

    Placement and M are inferred when not given: a stage lives on the rank
    whose row names it, and M is one more than the largest micro-batch.
    """
    for row in rows:
        for c in row:
            if not isinstance(c, str):
                raise ScheduleError(f"schedule {name!r}: cell {c!r} is not an action string "
                                    f"like '0F0'")
    actions = [[Action.parse(c) for c in row if c.strip()] for row in rows]
    P = len(actions)
    if P == 0:
        raise ScheduleError(f"schedule {name!r} has no rank rows; give one row per rank")
    if placement is None:
        found: dict[int, int] = {}
        for r, row in enumerate(actions):
            for a in row:
                if a.kind not in COMPUTE_KINDS:
                    continue
                prev = found.setdefault(a.stage, r)
                if prev != r:
                    raise ScheduleError(
                        f"stage {a.stage} appears on rank {prev} and on rank {r} ({a}); "
                        f"a stage must live on one rank")
        if not found:
            raise ScheduleError(f"schedule {name!r} has no compute actions")
        S = max(found) + 1
        missing = [s for s in range(S) if s not in found]
        if missing:
            raise ScheduleError(
                f"stage {missing[0]} never appears in schedule {name!r} (stages 0..{S - 1}); "
                f"every stage needs its actions")
        placement = [found[s] for s in range(S)]
    if M is None:
        M = 1 + max((a.mb for row in actions for a in row), default=0)
    return Schedule(name=name, P=P, M=M, actions=tuple(map(tuple, actions)),
                    placement=tuple(placement), forward_only=forward_only)
