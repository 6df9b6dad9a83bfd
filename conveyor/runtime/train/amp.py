"""Loss scaling for fp16: one scale for the whole pipeline and every replica.

float16 keeps 10 bits of mantissa and values down to 6e-8, so small
gradients underflow to zero. Scaling the loss by S before the backward scales
every gradient by S; they are divided by S again (unscaled) before the
update. A dynamic scale starts high and halves whenever a gradient overflows
(Inf or NaN), skipping that update; after ``growth_interval`` clean updates
it doubles.

Across a pipeline this needs agreement: an overflow on one stage is
invisible to the others, and a rank that skips alone, or halves its scale
alone, trains a different model from then on (the scales of two stages were
seen at 4.0 and 8.0 after such an overflow in another library). Here the
found-Inf flag travels with the step's loss (``conveyor.runtime.train.grads``),
so every rank, of every replica, sees the same flag at the same update and
makes the same decision: the scale is a power of two that every rank
updates by the same rule, so it is bit-equal everywhere (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from conveyor.errors import PipelineError

__all__ = ["LossScale", "Scaler", "resolve_scale", "check_master_weights"]


@dataclass(frozen=True)
class LossScale:
    """How the loss is scaled (``PipelineConfig(loss_scale=LossScale(...))``).

    init:            the first scale (2**16, as torch's GradScaler).
    dynamic:         halve on overflow and grow after clean updates; False:
                     fixed at ``init`` (an overflow still skips the update).
    growth_interval: clean updates in a row before the scale grows.
    growth_factor:   what it is multiplied by then (2).
    backoff_factor:  what it is multiplied by after an overflow (0.5).
    """

    init: float = 2.0 ** 16
    dynamic: bool = True
    growth_interval: int = 2000
    growth_factor: float = 2.0
    backoff_factor: float = 0.5

    def __post_init__(self) -> None:
        for name in ("init", "growth_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= (1.0 if name == "growth_factor" else 0.0):
                least = "above 1" if name == "growth_factor" else "positive"
                raise PipelineError(f"LossScale({name}={v!r}); use a finite number {least}")
        b = self.backoff_factor
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < b < 1.0:
            raise PipelineError(f"LossScale(backoff_factor={b!r}); use a number in (0, 1), "
                                f"e.g. 0.5")
        n = self.growth_interval
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PipelineError(f"LossScale(growth_interval={n!r}); use a positive number of "
                                f"updates, e.g. 2000")


def resolve_scale(loss_scale, precision: str) -> LossScale | None:
    """The LossScale of ``PipelineConfig(loss_scale=...)``: None (default:
    dynamic for fp16, none otherwise), "dynamic", "off", a positive number (a
    fixed scale) or a LossScale. PipelineError otherwise."""
    if loss_scale is None:
        return LossScale() if precision == "fp16" else None
    if isinstance(loss_scale, LossScale):
        return loss_scale
    if loss_scale == "dynamic":
        return LossScale()
    if loss_scale == "off":
        return None
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        return LossScale(init=float(loss_scale), dynamic=False)
    raise PipelineError(f"loss_scale={loss_scale!r}; use None (dynamic for fp16, off "
                        f"otherwise), 'dynamic', 'off', a fixed positive number, or "
                        f"LossScale(...)")


class Scaler:
    """The scale's state on one rank. Every rank calls ``update`` with the same
    flag after every update it would take, so every rank holds the same
    scale (see the module docstring)."""

    def __init__(self, spec: LossScale):
        self.spec = spec
        self.scale = float(spec.init)
        self.clean = 0  # clean updates since the last change

    def update(self, finite: bool) -> None:
        if not self.spec.dynamic:
            return
        if not finite:
            self.scale *= self.spec.backoff_factor
            self.clean = 0
            return
        self.clean += 1
        if self.clean == self.spec.growth_interval:
            grown = self.scale * self.spec.growth_factor
            if math.isfinite(grown):
                self.scale = grown
            self.clean = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean": self.clean}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.clean = float(state["scale"]), int(state["clean"])


def check_master_weights(policy, stages: dict) -> None:
    """Under a mixed policy the parameters are the float32 master weights
    that autocast reads in the compute dtype. A model already in bf16 or fp16
    would lose every update smaller than its resolution (weights drifted
    1.4-1.7e-2 from fp32-accumulated training in the issue's test), so it is
    refused, naming a parameter and the fix."""
    if not policy.mixed:
        return
    for s, module in sorted(stages.items()):
        for name, p in module.named_parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                dt = str(p.dtype).replace("torch.", "")
                raise PipelineError(
                    f"precision={policy.name!r} keeps the parameters in float32 as master "
                    f"weights and computes in {str(policy.compute).replace('torch.', '')} under "
                    f"autocast, but stage {s}'s parameter {name!r} is {dt}; build the model in "
                    f"float32 (model.float()), or use precision='fp32' to train {dt} "
                    f"parameters as they are (updates below their resolution are then lost)")
