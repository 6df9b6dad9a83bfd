"""One step's input to the interpreter (``StepData``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StepData"]


@dataclass
class StepData:
    """One step's input to the interpreter.

    sizes:    micro-batch sizes (every rank knows them).
    inputs:   per micro-batch, the tuple of input tensors (first stage only).
    targets:  per micro-batch, the target (last stage only).
    weights:  per micro-batch, the factor on its loss (size/batch for a mean).
    """

    sizes: list[int]
    inputs: list[tuple[torch.Tensor, ...]] | None = None
    targets: list[Any] | None = None
    weights: list[float] = field(default_factory=list)
    side: list[dict[str, Any]] | None = None  # per micro-batch: keyword args of every stage
    keys: list[Any] | None = None  # per micro-batch handshake key (default: its size)
    aux_weights: list[float] | None = None  # per micro-batch: factor on auxiliary losses

    def key(self, mb: int):
        return self.sizes[mb] if self.keys is None else self.keys[mb]

    def aux_weight(self, mb: int) -> float:
        """The micro-batch's share of the batch (see ``execute.aux``)."""
        return self.sizes[mb] / sum(self.sizes) if self.aux_weights is None \
            else self.aux_weights[mb]
