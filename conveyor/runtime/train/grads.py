"""Gradients made final, and checked, before anyone reads them.

After the last backward of a step (``forward_backward(sync=True)``, the
default, or ``finish_grads()``), on every rank:

1. with data parallelism, the replicas' gradients are summed (each replica's
   loss is weighted against the global batch, so the sum is the global
   batch's gradient; ``conveyor.runtime.train.dataparallel``);
2. tied weights' gradients are summed over the ranks that hold them
   (``conveyor.runtime.train.tied``);
3. with a loss scale, gradients are divided by it (unscaled);
4. this rank looks for a NaN or Inf in its gradients (and, on the last
   stage, in the loss): the non-finite guard.

The flags of step 4 travel with the step's loss (``run.share``), so every
rank learns at once whether any rank saw a non-finite value, at no extra
collective; ``finish_grads()`` alone reduces them with one all-reduce. What
follows is the same on every rank: the update is taken, or skipped by all
(``nonfinite="skip"``, or an overflow under loss scaling), or every rank
raises the same ``NonFiniteError`` (``nonfinite="raise"``), which names each
rank that saw it, its stages and its first non-finite parameter.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.runtime.errors import NonFiniteError
from conveyor.runtime.procs.deadline import bounded

__all__ = ["finish_local", "finish_grads", "unscale_and_check", "raise_nonfinite",
           "reduce_flags", "NONFINITE"]

NONFINITE = ("raise", "skip", "off")


def unscale_and_check(params, inv_scale: float, check: bool = True) -> bool:
    """Multiply every gradient by ``inv_scale`` (unless 1) and say whether
    any is NaN or Inf (only when ``check``). One pass over the gradients per
    (device, dtype) group."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad.detach())
    bad = False
    for (device, _), grads in groups.items():
        if inv_scale != 1.0:
            found = torch.zeros(1, device=device)
            inv = torch.full((1,), inv_scale, device=device)
            try:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
            except (RuntimeError, NotImplementedError):  # no kernel for this device/dtype
                torch._foreach_mul_(grads, inv_scale)
                found = _any_nonfinite(grads)
            bad |= bool(found.item())
        elif check:
            bad |= bool(_any_nonfinite(grads).item())
    return bad


def _any_nonfinite(grads: list[torch.Tensor]) -> torch.Tensor:
    # The largest magnitude of a tensor is NaN or Inf exactly when it holds one.
    top = torch.stack([n.float() for n in torch._foreach_norm(grads, math.inf)])
    return (~torch.isfinite(top)).any()


def finish_local(pipe) -> int:
    """Steps 1-4 of the module docstring on this rank; returns 1 if this
    rank's gradients hold a NaN or Inf (checked only when the guard is on or
    a loss scale needs it), else 0. Collective over the dp group and the tie
    groups."""
    if pipe.dp_sync is not None:
        pipe.dp_sync.finish()
    pipe.loop.tied.sync_grads()
    shards = pipe.shards
    if shards is not None:  # a sharded optimizer: this replica's slices of the sums
        shards.take_grads()
    scaler = pipe.loop.scaler
    inv = 1.0 / scaler.scale if scaler is not None else 1.0
    check = scaler is not None or pipe.config.nonfinite != "off"
    return int(unscale_and_check(pipe.params if shards is None else shards.params, inv,
                                 check=check))


def finish_grads(pipe) -> bool:
    """``Pipeline.finish_grads``: steps 1-4 after ``forward_backward(sync=False)``
    calls, the flags reduced with one all-reduce; True if every rank's
    gradients are finite. PipelineError if they were already final (a second
    sum would be wrong)."""
    if pipe._final:
        raise PipelineError(
            "finish_grads() after gradients were already made final (by "
            "forward_backward(sync=True) or an earlier finish_grads()) would sum them "
            "twice; call it once after forward_backward(..., sync=False) calls")
    bad = finish_local(pipe)
    _, grad_bad = reduce_flags(pipe, [0.0, float(bad)])
    pipe._final = True
    pipe.loop.finished(grad_bad == 0, False, grad_bad > 0, False, bool(bad), None)
    return grad_bad == 0


def reduce_flags(pipe, flags: list[float]) -> list[float]:
    """Sum per-rank flags over every rank of the job (pipeline and replicas):
    one all-reduce, for ``finish_grads()`` (a step's flags ride on its loss)."""
    ctx = pipe.ctx
    if ctx.world_size == 1 and ctx.dp_size == 1:
        return flags
    buf = torch.tensor(flags, dtype=torch.float64, device=ctx.device)
    with bounded("the non-finite flags' all-reduce", None):  # every rank of every replica
        dist.all_reduce(buf)
        return buf.tolist()


def _first_nonfinite(pipe) -> str | None:
    from conveyor.runtime.train.checkpoint_io import _param_names

    names = _param_names(pipe)
    for s in sorted(pipe.stages):
        for p in pipe.stages[s].parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return names.get(id(p), "?")
    return None


def raise_nonfinite(pipe, loss_bad: bool, grad_bad: bool, loss_value) -> None:
    """Every rank calls this when the flags say some rank saw a non-finite
    value and the policy is to stop: the ranks' reports are gathered (one
    collective, on this failure path only) and every rank raises the same
    NonFiniteError. ``loss_value``: the step's loss, or a sentence naming the
    non-finite auxiliary loss of this rank."""
    note = loss_value if isinstance(loss_value, str) else f"the step's loss is {loss_value!r}"
    mine = {"stages": sorted(pipe.stages),
            "loss": note if loss_bad else None,
            "param": _first_nonfinite(pipe) if grad_bad else None}
    world = dist.get_world_size() if dist.is_initialized() else 1
    reports = [mine] * world
    if world > 1:
        with bounded("the non-finite report's gather", None):
            dist.all_gather_object(reports, mine)
    found = {r: rep for r, rep in enumerate(reports) if rep["loss"] or rep["param"]}
    lines = []
    for r, rep in found.items():
        what = []
        if rep["loss"]:
            what.append(rep["loss"])
        if rep["param"]:
            what.append(f"first non-finite gradient: {rep['param']!r}")
        stages = ", ".join(map(str, rep["stages"]))
        lines.append(f"rank {r} (stage {stages}): {'; '.join(what)}")
    step = pipe.steps  # counted once the pass returns
    raise NonFiniteError(
        f"step {step}: a NaN or Inf reached the gradients, so no rank updated its "
        f"weights:\n  " + "\n  ".join(lines) + "\nFix: lower the learning rate or clip "
        "(PipelineConfig(max_grad_norm=...)), check the data of this step, use "
        "precision='bf16' (float32's range) instead of 'fp16'; or skip such steps on every "
        "rank with PipelineConfig(nonfinite='skip') (counted in StepResult.skipped)",
        found=found) from None
