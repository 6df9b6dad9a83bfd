"""Rank job for the planning tests: checkpointed and planned pipelines against
a single-process reference, and the activation bytes each rank held."""

from __future__ import annotations

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute.recompute import CheckpointedStage
from tests.runtime import _models


def planned_job(ctx, configs: list[dict]) -> list[dict]:
    """Per config: one step's loss and gradient errors against the unsplit
    model (float64), this rank's peak activation bytes, and its stages."""
    torch.set_num_threads(1)
    out = []
    for cfg in configs:
        model = _models.mlp(cfg["depth"])
        ref = _models.mlp(cfg["depth"])
        kw = {k: cfg[k] for k in ("schedule", "microbatches", "balance", "checkpoint", "plan",
                                  "profile") if k in cfg}
        pipe = Pipeline(model, loss_fn=_models.loss_fn, optimizer=None, ctx=ctx,
                        config=PipelineConfig(track_memory=True), **kw)
        x, y = _models.batch(cfg["batch"], seed=3)
        res = pipe.forward_backward(x, y)
        ref_loss = _models.loss_fn(ref(x), y)
        ref_loss.backward()
        local = {id(p) for p in pipe.params}
        err = max(_models.rel_err(p.grad, q.grad)
                  for p, q in zip(model.parameters(), ref.parameters()) if id(p) in local)
        out.append({
            "id": cfg["id"], "rank": ctx.rank, "grad_err": err,
            "loss_err": abs(res.loss - ref_loss.item()) / abs(ref_loss.item()),
            "layers": {s: len(m.stage if isinstance(m, CheckpointedStage) else m)
                       for s, m in pipe.stages.items()},
            "checkpointed": {s: isinstance(m, CheckpointedStage) for s, m in pipe.stages.items()},
            "M": pipe.M, "schedule": pipe.schedule.name,
            "peak_activation_bytes": res.stats["peak_activation_bytes"]})
    return out
