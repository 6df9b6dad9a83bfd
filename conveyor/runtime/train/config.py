"""What a Pipeline is configured with (``PipelineConfig``) and what a step
returns (``StepResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from conveyor.errors import PipelineError
from conveyor.runtime.checks import check_config
from conveyor.runtime.execute.compiled import resolve_compile
from conveyor.runtime.execute.precision import PRESETS, dtype_of, resolve
from conveyor.runtime.train.amp import resolve_scale
from conveyor.runtime.train.grads import NONFINITE
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
    timeout_s:      longest wait on a peer, point-to-point or in a
                    collective (also between steps and in checkpoint saves),
                    before every rank reports its position and exits (see
                    hang.py, deadline.py); the first step a process runs gets
                    twice that (handshakes, lazy start-up, the first step
                    after a checkpoint load). Building the pipeline is
                    bounded by LaunchOptions.timeout_s instead.
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
                    steadily (conveyor.runtime.transport.shm; guide:
                    https://github.com/conveyor-pp/conveyor/blob/main/docs/runtime.md).
    precision:      "fp32" (default); "bf16": every stage's forward under
                    bfloat16 autocast, parameters (the master weights) and
                    their gradients float32, the loss in float32; "fp16": the
                    same in float16, with dynamic loss scaling agreed by every
                    rank (conveyor.runtime.execute.precision; guide:
                    https://github.com/conveyor-pp/conveyor/blob/main/docs/precision.md).
    boundary_dtype: the dtype floating tensors cross a cut between ranks in
                    ("bf16", "fp16", "fp32", or a torch dtype); None: the
                    compute dtype under bf16/fp16 (half of fp32's bytes), as
                    computed under fp32. The receiver widens back to the
                    sender's dtype, so only the cut's rounding changes.
    loss_scale:     None: dynamic for fp16, none otherwise; "dynamic";
                    "off"; a number (a fixed scale); or LossScale(...)
                    (conveyor.runtime.train.amp).
    nonfinite:      when a loss or gradient is NaN or Inf on any rank: "raise"
                    (default) stops every rank with a NonFiniteError naming
                    the rank, stage and first non-finite parameter; "skip"
                    skips that update on every rank (StepResult.skipped,
                    Pipeline.skipped_steps); "off": no check (saves one pass
                    over the gradients per update). Under loss scaling an
                    overflowing gradient always skips the update and shrinks
                    the scale, as intended; a non-finite loss follows this.
    compile:        False (default); True: each rank compiles the stages it
                    holds with torch.compile (inductor), each graph's backward
                    split into I and W for zero-bubble schedules; a dict:
                    the same with these inductor options (as
                    ``torch.compile(options=...)``). Guide:
                    https://github.com/conveyor-pp/conveyor/blob/main/docs/compile.md.
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
    precision: str = "fp32"
    boundary_dtype: Any = None
    loss_scale: Any = None
    nonfinite: str = "raise"
    compile: Any = False
    shard_optimizer: bool = False

    def __post_init__(self) -> None:
        check_config(self)
        if self.precision not in PRESETS:
            resolve(self.precision, None, torch.device("cpu"))  # raises, naming the choices
        dtype_of(self.boundary_dtype, "boundary_dtype")
        resolve_scale(self.loss_scale, self.precision)
        resolve_compile(self.compile)
        if self.nonfinite not in NONFINITE:
            raise PipelineError(f"nonfinite={self.nonfinite!r}; use 'raise' (stop every rank, "
                                f"naming where), 'skip' (skip the update on every rank) or "
                                f"'off' (no check)")


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
    finite:    after ``forward_backward(sync=True)`` (and so ``step``): whether
               every rank's loss and gradients were finite; None otherwise.
    skipped:   ``step`` only: the update was skipped on every rank (a NaN or
               Inf under nonfinite="skip", or an overflow under loss scaling).
    aux_loss:  the auxiliary losses stages added (``execute.aux``: an MoE
               router's loss, ...), weighted per micro-batch, summed over
               every rank; 0.0 when none. The objective is loss + aux_loss.
    aux:       this rank's auxiliary losses by name (its stages' only).
    """

    loss: float | None
    timeline: Timeline | None = None
    stats: dict = field(default_factory=dict)
    wall_s: float = 0.0
    output: Any = None
    finite: bool | None = None
    skipped: bool = False
    aux_loss: float = 0.0
    aux: dict = field(default_factory=dict)
