"""conveyor's runtime behind the benchmark's runner interface."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from .config import LR
from .switches import config_for, during_step, switch_off
from .workloads import loss_fn

__all__ = ["ConveyorRunner"]


class ConveyorRunner:
    """``conveyor.runtime.Pipeline`` built from this rank's (probed) stages.

    Timed steps run with recording off, as a user's training loop would;
    ``recorded_step`` runs one more step with conveyor's own timeline and
    activation-memory counter on, to cross-check the probe. ``off``: sources of
    per-step overhead switched off (``harness.switches``; empty: conveyor as
    a user runs it).
    """

    def __init__(self, modules: dict[int, nn.Module], *, rank: int, P: int, schedule: str,
                 M: int, device: torch.device, off: frozenset[str] = frozenset()):
        self.rank, self.off = rank, off
        self.pipe = Pipeline.from_stages(
            modules.__getitem__,  # called for this rank's stages only
            loss_fn=loss_fn, optimizer=lambda params: torch.optim.SGD(params, lr=LR),
            schedule=schedule, microbatches=M,
            config=config_for(PipelineConfig(record=False), off))
        switch_off(self.pipe, off)
        self.stats: dict = {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # Every rank passes the batch: the runtime reads inputs on the first
        # stage, targets on the last, and the batch size everywhere.
        with during_step(self.off):
            self.stats = self.pipe.step(x, y).stats

    def recorded_step(self, x: torch.Tensor, y: torch.Tensor) -> dict | None:
        """One step with conveyor's own recorder and memory counter; on rank 0
        its timeline's metrics, elsewhere None."""
        config = self.pipe.config
        self.pipe.config = dataclasses.replace(config, track_memory=True)
        try:
            with during_step(self.off):
                result = self.pipe.step(x, y, record=True)
        finally:
            self.pipe.config = config
        t = result.timeline
        if t is None:
            return None
        ranks = t.meta.get("ranks", [])
        return {"bubble": t.bubble_overall, "peak_activations": t.peak_activations(),
                "step_s": t.step_time,
                "peak_activation_bytes": [r.get("peak_activation_bytes", 0) for r in ranks],
                "sent_bytes": sum(r.get("sent_bytes", 0) for r in ranks)}
