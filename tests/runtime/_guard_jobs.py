"""Rank jobs for loss scaling, the non-finite guard and final gradients.

A value is poisoned on one rank only, through a hook on one of its
parameters' gradients (``poison``), or through the loss on the last stage,
so the test sees whether every other rank learns of it.
"""

from __future__ import annotations

import math

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train.amp import LossScale
from conveyor.runtime.train.losses import TokenCrossEntropy
from tests.models import _lm
from tests.models._jobs import _pairs
from tests.runtime import _precision_jobs as P_
from tests.runtime._ckpt_jobs import weights
from tests.runtime._models import rel_err


class Poison:
    """A gradient hook that turns one parameter's gradient into ``value``
    while ``on``."""

    def __init__(self, value: float):
        self.value, self.on = value, False

    def __call__(self, g):
        return g * self.value if self.on else g


class PoisonedLoss(TokenCrossEntropy):
    """TokenCrossEntropy whose result is NaN while ``on`` (last stage only)."""

    on = False

    def __call__(self, logits, targets):
        loss = super().__call__(logits, targets)
        return loss * math.nan if self.on else loss


def _first_param(pipe):
    s = min(pipe.stages)
    return next(p for p in pipe.stages[s].parameters())


def scaler_job(ctx, *, dp: int = 1, poison_rank: int = 0, steps: int = 6, at: int = 2) -> dict:
    """fp16 with a dynamic scale (init 2**12, growth every 3 clean updates);
    at step ``at`` the first parameter of global rank ``poison_rank`` gets an
    Inf gradient. Per step: skipped, the scale after it, this rank's weights."""
    torch.set_num_threads(1)
    cfg = PipelineConfig(precision="fp16", loss_scale=LossScale(init=2.0 ** 12,
                                                                growth_interval=3))
    pipe = Pipeline(P_.model(), loss_fn=TokenCrossEntropy(), optimizer=P_.adam,
                    schedule="1f1b", microbatches=P_.M, ctx=ctx, config=cfg, dp=dp)
    hook = Poison(math.inf)
    if ctx.rank == poison_rank:  # ctx is the launch's: global ranks
        _first_param(pipe).register_hook(hook)
    rows = []
    for k in range(steps):
        hook.on = k == at
        scale_used = pipe.loss_scale
        res = pipe.step(*P_.batch(k))
        rows.append({"skipped": res.skipped, "finite": res.finite, "scale_used": scale_used,
                     "scale": pipe.loss_scale, "loss": res.loss, "weights": weights(pipe)})
    return {"rank": pipe.ctx.rank, "dp_rank": pipe.ctx.dp_rank, "rows": rows,
            "skipped_steps": pipe.skipped_steps}


def clip_accumulate_job(ctx, steps: int) -> dict:
    """fp16 at a fixed scale with global clipping and accumulation over 2
    calls: this rank's weights after ``steps`` updates."""
    torch.set_num_threads(1)
    cfg = PipelineConfig(precision="fp16", loss_scale=2.0 ** 10, max_grad_norm=0.05,
                         accumulate=2)
    pipe = Pipeline(P_.model(), loss_fn=TokenCrossEntropy(), optimizer=P_.adam,
                    schedule="1f1b", microbatches=P_.M, ctx=ctx, config=cfg)
    for k in range(2 * steps):
        pipe.step(*P_.batch(k))
    return {"weights": weights(pipe)}


def guard_job(ctx, policy: str, where: str, steps: int = 3, at: int = 1) -> dict:
    """fp32, nonfinite=``policy``; at step ``at`` a NaN appears in the loss
    (``where="loss"``) or in rank 0's first gradient (``where="grad"``)."""
    torch.set_num_threads(1)
    loss = PoisonedLoss()
    pipe = Pipeline(P_.model(), loss_fn=loss, optimizer=P_.adam, schedule="1f1b",
                    microbatches=P_.M, ctx=ctx, config=PipelineConfig(nonfinite=policy,
                                                                      timeout_s=20))
    hook = Poison(math.nan)
    if where == "grad" and ctx.rank == 0:
        _first_param(pipe).register_hook(hook)
    rows = []
    for k in range(steps):
        loss.on = hook.on = k == at
        res = pipe.step(*P_.batch(k))
        rows.append({"skipped": res.skipped, "finite": res.finite, "weights": weights(pipe)})
    return {"rows": rows, "skipped_steps": pipe.skipped_steps}


def final_grads_job(ctx, dp: int = 1) -> list[dict]:
    """A tied float64 LM: after forward_backward (sync, default) every
    gradient equals the unsplit model's on the global batch; after
    forward_backward(sync=False) the tied one does not yet, after
    finish_grads() it does."""
    torch.set_num_threads(1)
    B = 8
    x, y = _lm.padded_batch(B, seed=3)
    ref = _lm.tied_lm()
    loss = _lm.token_mean(ref(x), y)
    loss.backward()
    out = []
    for sync in (True, False):
        # Summed per micro-batch, divided by the global batch's token count:
        # the token mean of the whole batch, whatever each micro-batch holds.
        pipe = Pipeline(_lm.tied_lm(), loss_fn=TokenCrossEntropy(), optimizer=None,
                        schedule="1f1b", microbatches=2, ctx=ctx, dp=dp)
        pipe.forward_backward(x, y, sync=sync)
        pairs = _pairs(pipe, ref)
        tied = {id(t) for tie in pipe.loop.tied.mine for t in tie.local}
        row = {"sync": sync, "tied_err": [rel_err(p.grad, r.grad) for p, r in pairs
                                          if id(p) in tied],
               "other_err": [rel_err(p.grad, r.grad) for p, r in pairs if id(p) not in tied]}
        if not sync:
            row["finite"] = pipe.finish_grads()
            row["after_tied_err"] = [rel_err(p.grad, r.grad) for p, r in pairs if id(p) in tied]
            row["after_other_err"] = [rel_err(p.grad, r.grad) for p, r in pairs
                                      if id(p) not in tied]
        out.append(row)
    return out


def p2_job(ctx) -> dict:
    """Everything P=2 needs, in one launch."""
    return {"scaler": scaler_job(ctx), "clip": clip_accumulate_job(ctx, steps=3),
            "skip_loss": guard_job(ctx, "skip", "loss"), "final": final_grads_job(ctx)}


def dp_job(ctx) -> dict:
    """dp 2 x pp 2 (4 processes): the Inf on replica 1's stage 0 (global rank 2)."""
    return {"scaler": scaler_job(ctx, dp=2, poison_rank=2), "final": final_grads_job(ctx, dp=2)}


def mixed_settings_job(ctx) -> None:
    """Rank 1 asks for bf16, rank 0 for fp32: the first step must refuse."""
    cfg = PipelineConfig(precision="bf16" if ctx.rank == 1 else "fp32", timeout_s=20)
    pipe = Pipeline(P_.model(), loss_fn=TokenCrossEntropy(), optimizer=None, schedule="1f1b",
                    microbatches=P_.M, ctx=ctx, config=cfg)
    pipe.step(*P_.batch(0))
