"""What a Pipeline is configured with (``PipelineConfig``) and what a step
returns (``StepResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.runtime.checks import check_config
from conveyor.sim.timeline import Timeline

__all__ = ["PipelineConfig", "StepResult"]


@dataclass(frozen=True)
class PipelineConfig:
    """Options of a Pipeline; all have working defaults.

    loss_reduction: "mean" if ``loss_fn`` averages over the micro-batch (each
                    micro-batch's loss is then weighted by size/batch, as one
                    unsplit step would), "sum" if it sums (weight 1).
    record:         record a measured timeline on every step (``step`` can
                    override per call).
    track_memory:   count the activation bytes held for backward (peak per
                    rank); None: only on recorded steps.
    timeout_s:      longest wait on a peer inside a step before every rank
                    reports its position and exits (see hang.py); the first
                    step a process runs gets twice that (handshakes, lazy
                    start-up, the first step after a checkpoint load).
                    Building the model and loading checkpoints happen
                    outside steps, bounded by LaunchOptions.timeout_s.
    prepost:        post receives before the compute that precedes them, to
                    overlap transfer and compute; None: on for gloo, off for
                    NCCL (which matches messages in order, not by tag).
    clock_rounds:   ping-pongs per rank for the clock alignment at start-up.
    check_weights:  on the first step, also check that every rank built the
                    same initial weights (a digest of the unsplit parameters;
                    for scripts that build the whole model on every rank).
    strict_order:   testing aid: on gloo, pair the messages between two ranks
                    in the order they were posted, as NCCL does, instead of
                    by tag, so that a schedule whose send order differs from
                    its peer's receive order fails on CPU too. Also on when
                    the environment sets CONVEYOR_STRICT_ORDER=1.
    max_grad_norm:  clip the global gradient norm (all ranks, tied weights
                    counted once) to this before each update; None: no clipping.
    accumulate:     calls of ``step`` per update: gradients add up over this
                    many calls, are divided by it (the mean over the batches)
                    and the update happens on the last call.
    dp_overlap:     with data parallelism (dp > 1): start each stage's gradient
                    all-reduce as soon as its last backward on this rank is
                    done, overlapping the rest of the backward; False: all of
                    them after the backward, before the update.
    varying_shapes: activation shapes may change between the micro-batches of
                    a step (e.g. each trimmed to its longest sequence): a shape
                    handshake precedes every micro-batch at every cut.
                    Without it shapes are keyed by micro-batch size and the
                    side inputs' shapes, so a new sequence length between steps
                    costs one handshake and a known one none.
    shard_optimizer: with data parallelism (dp > 1): split the optimizer state
                    over the replicas (ZeRO-1): gradients reduce-scattered, each
                    replica updates its slice of the weights, the slices
                    all-gathered before the next forward
                    (conveyor.runtime.train.sharding); dp = 1 is refused.
    transport:      how activations and gradients cross the cuts: "dist",
                    torch.distributed (gloo on CPU, NCCL on CUDA); "shm",
                    shared memory between CPU ranks on one host (Linux,
                    x86-64): no transport thread between the ranks, so
                    transfers cost what the planner's model says more
                    steadily (conveyor.runtime.transport.shm, docs/runtime.md).
    """

    loss_reduction: str = "mean"
    record: bool = False
    track_memory: bool | None = None
    timeout_s: float = 60.0
    prepost: bool | None = None
    clock_rounds: int = 8
    strict_order: bool = False
    check_weights: bool = False
    max_grad_norm: float | None = None
    accumulate: int = 1
    varying_shapes: bool = False
    dp_overlap: bool = True
    transport: str = "dist"
    shard_optimizer: bool = False

    def __post_init__(self) -> None:
        check_config(self)


@dataclass
class StepResult:
    """What a step returns, on every rank.

    loss:      the step's loss (the whole batch's, as the unsplit model's; with
               dp > 1 the global batch's, the same on every replica).
    timeline:  the measured timeline, on rank 0 of a recorded step, else None
               (with dp > 1: on pipeline rank 0 of each replica, its own).
    stats:     this rank's counters: sent_bytes / recv_bytes (activations and
               gradients), meta_bytes (shape handshake), messages,
               peak_activation_bytes (if tracked), peak_device_bytes (CUDA).
    wall_s:    this rank's wall time for the step.
    output:    for ``predict``: the last stage's output on its rank, else None.
    """

    loss: float | None
    timeline: Timeline | None = None
    stats: dict = field(default_factory=dict)
    wall_s: float = 0.0
    output: Any = None
