"""Data parallelism in the cost model: ranks on nodes, links by node, and the
gradient all-reduce of each stage over its data-parallel group.

Layout (the runtime's): dp identical replicas of the P-rank pipeline, world =
dp x P, global rank g = d*P + r for replica d and pipeline rank r, and node =
g // ranks_per_node. Pipeline rank r of every replica forms one data-parallel
group {d*P + r : d < dp}, which all-reduces the gradients of rank r's stages.

Replicas run the same schedule on equal slices of the batch, so the simulator
times one replica (replica d's timeline is replica 0's) and adds the
all-reduces. Where ranks_per_node does not divide P, replicas sit differently
on the nodes; a cut is then timed as inter-node when it crosses a node in any
replica (the step waits for the slowest replica at the all-reduce).

The all-reduce is a ring: each rank sends and receives 2(dp-1)/dp of the
bytes in 2(dp-1) steps, so it takes 2(dp-1)/dp x bytes / bandwidth +
2(dp-1) x latency over the slowest link of the ring (inter-node as soon as
the group spans two nodes). A rank's all-reduces run one at a time in the
order their stages become ready, on links of their own (no contention with
the pipeline's transfers or with other ranks), beside the rank's compute.

No torch.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from conveyor.schedule.ir import BACKWARD_KINDS, W

__all__ = ["ring_allreduce_time", "crosses_nodes", "group_spans_nodes", "Collective",
           "schedule_allreduces"]


class Collective(NamedTuple):
    """Rank ``rank`` all-reduced the gradients of stage ``stage`` from ``start``
    to ``end``; it could have started at ``ready`` (its last backward's end,
    or the rank's last action's when the all-reduce waits for the step)."""

    rank: int
    stage: int
    start: float
    end: float
    ready: float


def ring_allreduce_time(nbytes: float, dp: int, latency: float, bandwidth: float) -> float:
    """Time of a ring all-reduce of ``nbytes`` over ``dp`` ranks: 0 for dp = 1."""
    if dp <= 1:
        return 0.0
    steps = 2 * (dp - 1)
    moved = steps / dp * nbytes
    return (moved / bandwidth if moved else 0.0) + steps * latency


def _node(g: int, per_node: int | None) -> int:
    return 0 if per_node is None else g // per_node


def crosses_nodes(r1: int, r2: int, P: int, dp: int, per_node: int | None) -> bool:
    """Whether pipeline ranks r1 and r2 sit on different nodes in any replica."""
    if per_node is None or r1 == r2:
        return False
    return any(_node(d * P + r1, per_node) != _node(d * P + r2, per_node) for d in range(dp))


def group_spans_nodes(r: int, P: int, dp: int, per_node: int | None) -> bool:
    """Whether the data-parallel group of pipeline rank r spans several nodes."""
    if per_node is None or dp <= 1:
        return False
    first = _node(r, per_node)
    return any(_node(d * P + r, per_node) != first for d in range(1, dp))


def _ready_times(actions: Sequence[Sequence], end_of, stages_of: list[list[int]],
                 overlap: bool) -> list[list[tuple[float, int]]]:
    """Per rank, (ready time, stage) of each of its stages that has a backward."""
    out = []
    for r, row in enumerate(actions):
        if not row:
            out.append([])
            continue
        last: dict[int, float] = {}
        want = len(stages_of[r])
        # A rank runs its list in order: the last backward of a stage in the
        # list is the last to end, so a scan from the end stops early.
        for a in reversed(row):
            s, kind = a[0], a[1]
            if s not in last and (kind in BACKWARD_KINDS or kind == W):
                last[s] = end_of(a)
                if len(last) == want:
                    break
        if not overlap:
            done = end_of(row[-1])
            last = {s: done for s in last}
        out.append(sorted((t, s) for s, t in last.items()))
    return out


def schedule_allreduces(actions: Sequence[Sequence], end_of, placement: Sequence[int],
                        times: Sequence[float], overlap: bool) -> list[Collective]:
    """The all-reduce of every stage that ran a backward, on its rank.

    actions:   per rank, its action list (as the replay ran it).
    end_of:    the end time of an action (e.g. ``Replay.end_of``).
    placement: rank of each stage.
    times:     all-reduce time of each stage (0: none is drawn).
    overlap:   start after the stage's last backward (B, I or W) on its rank;
               otherwise after the rank's last action.
    Returns the collectives in rank order, each rank's in start order.
    """
    stages_of: list[list[int]] = [[] for _ in actions]
    for s, r in enumerate(placement):
        stages_of[r].append(s)
    out = []
    for r, ready in enumerate(_ready_times(actions, end_of, stages_of, overlap)):
        free = None
        for t, s in ready:
            if times[s] <= 0:
                continue
            start = t if free is None or t > free else free
            free = start + times[s]
            out.append(Collective(r, s, start, free, t))
    return out
