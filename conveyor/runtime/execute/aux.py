"""Auxiliary losses made on any stage: an MoE router's load-balancing loss, a
multi-token-prediction head, a regulariser.

A stage's forward calls ``add_aux_loss(name, value)`` with a scalar that
depends on its parameters (and, through its input, on earlier stages'). The
interpreter collects what each forward of (stage, micro-batch) adds, and

- weights it by the micro-batch's share of the batch (size / batch, against
  the global batch with data parallelism): an auxiliary loss is taken to be
  a mean over its micro-batch, so the step's value is the batch mean, at any
  M and whatever ``loss_reduction`` the main loss uses;
- multiplies it by the loss scale (fp16), like the main loss;
- adds it to the roots of that (stage, micro-batch)'s backward (B, or I and
  W), so its gradient is taken on the stage that made it and reaches earlier
  stages through the input gradient, as in the unsplit model.

Nothing extra crosses a cut: the value stays on its rank until the step's
loss is shared, where the ranks' totals ride in the same all-reduce.
``StepResult.aux_loss`` is the total over every rank, ``StepResult.aux`` this
rank's values by name; ``StepResult.loss`` stays the main loss alone. The
non-finite guard checks them (a NaN in an auxiliary loss stops or skips the
step like one in the loss).

Outside a training step (``predict``, ``evaluate``, the recomputation of a
checkpointed stage, a plain call of the model) ``add_aux_loss`` does
nothing, unless the caller collects: ``with collect_aux() as terms:
model(x)`` gives the unsplit model's terms, for a reference.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from conveyor.errors import PipelineError

__all__ = ["add_aux_loss", "collect_aux", "aux_roots"]

_sink: ContextVar[list | None] = ContextVar("conveyor_aux_sink", default=None)


def add_aux_loss(name: str, value: torch.Tensor) -> None:
    """Add ``value`` (a scalar tensor, the mean over this micro-batch) to the
    step's objective under ``name``; see the module docstring. Does nothing
    when no one collects. Raises PipelineError for a value that is not a
    one-element tensor."""
    sink = _sink.get()
    if sink is None:
        return
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
               else f"a {type(value).__name__}")
        raise PipelineError(f"add_aux_loss({name!r}, ...) got {got}; an auxiliary loss is a "
                            f"scalar tensor (reduce it over the micro-batch, e.g. .mean())")
    sink.append((str(name), value.reshape(())))


@contextmanager
def collect_aux() -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Collect the ``add_aux_loss`` calls made inside the block, in order, as
    (name, value) pairs."""
    terms: list = []
    token = _sink.set(terms)
    try:
        yield terms
    finally:
        _sink.reset(token)


def aux_roots(terms, weight: float, scale: float, values: dict) -> list[torch.Tensor]:
    """The backward roots of one forward's terms: each weighted by the
    micro-batch's share and the loss scale; adds the weighted values (float64,
    unscaled) into ``values`` by name. Terms that need no gradient add to the
    value only."""
    roots = []
    for name, v in terms:
        weighted = v * weight
        got = weighted.detach().to(torch.float64)
        values[name] = got if name not in values else values[name] + got
        if weighted.requires_grad:
            roots.append(weighted * scale if scale != 1.0 else weighted)
    return roots
