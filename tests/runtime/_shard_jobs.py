"""Rank jobs for the sharded-optimizer tests: dp replicas with the optimizer
state split over them (and the same without), against the unsplit model
trained with Adam on the global batch (computed on every rank)."""

from __future__ import annotations

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train import checkpoint_io
from conveyor.runtime.train.sharding import optimizer_state_bytes
from tests.runtime import _dp_jobs

LR = 0.01


def adam(ps):
    # eps well above rounding: with the default 1e-8 an element whose gradient
    # is at the rounding level gets a step of about lr either way, so two
    # summation orders would differ by ~lr there (measured: 1.5e-8 after three
    # steps). Adam's state and update rule are unchanged otherwise.
    return torch.optim.Adam(ps, lr=LR, eps=1e-3)


def reference(cfg: dict, B: int, steps: int, seed: int = 1) -> dict:
    """The unsplit model after ``steps`` Adam updates on the global batches
    (one per ``accumulate`` batches, on their mean), clipped when asked:
    {"losses", "weights"}."""
    model = _dp_jobs._model(cfg)
    opt = adam(model.parameters())
    k_acc, losses = cfg.get("accumulate", 1), []
    for k in range(steps):
        x, y = _dp_jobs._batch(cfg, B, seed + k)
        loss = _dp_jobs._full_loss(cfg, model, x, y)
        (loss / k_acc).backward()
        losses.append(float(loss.detach()))
        if (k + 1) % k_acc == 0:
            if cfg.get("clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            opt.step()
            opt.zero_grad()
    return {"losses": losses,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def pipe_for(cfg: dict, ctx, dp: int, shard: bool, seed: int | None = None):
    model = _dp_jobs._model({**cfg, "seed": cfg.get("seed", 0) if seed is None else seed})
    names = {id(p): n for n, p in model.named_parameters()}
    config = PipelineConfig(max_grad_norm=cfg.get("clip"), accumulate=cfg.get("accumulate", 1),
                            dp_overlap=cfg.get("overlap", True), shard_optimizer=shard)
    pipe = Pipeline(model, loss_fn=_dp_jobs._loss(cfg), optimizer=adam,
                    schedule=cfg["schedule"], microbatches=cfg.get("M", 4), ctx=ctx, dp=dp,
                    config=config)
    return pipe, names


def train_job(ctx, configs: list[dict]) -> list[dict]:
    """Each config twice, sharded and not, at dp 2 x pp (world / 2): losses,
    this rank's weights (as lists), optimizer state bytes, scatters started
    during the backward; saves the sharded run where asked."""
    torch.set_num_threads(1)
    out = []
    for cfg in configs:
        B, steps = cfg.get("B", 8), cfg.get("steps", 3)
        row = {"id": cfg["id"], "dp_rank": ctx.rank // (ctx.world_size // 2),
               "pp_rank": ctx.rank % (ctx.world_size // 2)}
        for shard in (False, True):
            pipe, names = pipe_for(cfg, ctx, 2, shard)
            losses, early = [], []
            for k in range(steps):
                x, y = _dp_jobs._batch(cfg, B, 1 + k)
                losses.append(pipe.step(x, y).loss)
                early.append(pipe.dp_sync.early)
            if shard:
                pipe.shards.wait()
            # autograd accumulated into the flat buffer's views (no second copy)
            bound = shard and all(p.grad is not None and p.grad.data_ptr() == v.data_ptr()
                                  for b in pipe.shards.buckets if not b.late
                                  for p, v in zip(b.params, b.views))
            tag = "sharded" if shard else "plain"
            row[tag] = {"losses": losses, "early": early, "grads_in_buffer": bound,
                        "weights": {names[id(p)]: p.detach().tolist() for p in pipe.params},
                        "state_bytes": optimizer_state_bytes(pipe.optimizer),
                        "param_bytes": sum(p.numel() * p.element_size() for p in pipe.params),
                        "eval": pipe.evaluate(x, y)}
            if shard and cfg.get("save"):
                pipe.save(cfg["save"])
        out.append(row)
    return out


def resume_job(ctx, path: str, cfg: dict, runs: list[tuple[int, bool]]) -> dict:
    """Load the checkpoint at ``path`` at each (dp, shard) on this world,
    take one more step (batch seed 4) and return this rank's weights."""
    torch.set_num_threads(1)
    res = {}
    for dp, shard in runs:
        pipe, names = pipe_for(cfg, ctx, dp, shard, seed=7)
        pipe.load(path)
        x, y = _dp_jobs._batch(cfg, cfg.get("B", 8), 4)
        pipe.step(x, y)
        if shard:
            pipe.shards.wait()
        res[f"dp{dp}-{'sharded' if shard else 'plain'}"] = {
            names[id(p)]: p.detach().tolist() for p in pipe.params}
    res["stage_names"] = checkpoint_io.stage_names(pipe)
    return res
