"""Activation checkpointing per stage: keep a stage's input, recompute the rest.

A checkpointed stage runs its forward under ``torch.utils.checkpoint``
(``use_reentrant=False``): autograd keeps only the stage's input (the runtime
keeps its output for the backward anyway), and the stage's forward runs again
inside its backward to rebuild what it needs. Gradients are the same as
without it; the cost is one more forward per micro-batch, which the planner
charges to the stage's backward (``conveyor.plan.costs``).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn
from torch.utils.checkpoint import checkpoint

from conveyor.errors import PipelineError

__all__ = ["CheckpointedStage", "resolve_checkpoint", "apply_checkpoint"]


class CheckpointedStage(nn.Module):
    """``stage`` whose activations are recomputed in the backward."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, *args, **side):
        return checkpoint(self.stage, *args, use_reentrant=False, **side)


def resolve_checkpoint(option, S: int) -> list[bool]:
    """``"none"``, ``"full"`` or one bool per stage -> S bools.

    Raises PipelineError naming the value for anything else.
    """
    if option is None or option == "none":
        return [False] * S
    if option == "full":
        return [True] * S
    if isinstance(option, str) or not isinstance(option, Sequence):
        raise PipelineError(f"checkpoint={option!r}; use 'none', 'full' or one True/False per "
                            f"stage ({S} stages)")
    flags = list(option)
    if len(flags) != S or not all(isinstance(x, bool) for x in flags):
        raise PipelineError(f"checkpoint={flags!r} must hold {S} True/False values, one per "
                            f"stage")
    return flags


def apply_checkpoint(stages: list[nn.Module], flags: list[bool]) -> list[nn.Module]:
    """The stages with those flagged wrapped in CheckpointedStage."""
    return [CheckpointedStage(st) if on else st for st, on in zip(stages, flags)]
