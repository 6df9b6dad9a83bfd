"""Rank jobs for the data-parallel tests: dp replicas of a pipeline, compared
with the unsplit model on the global batch (computed on every rank).

One launch runs every configuration; each returns floats (errors, losses),
never tensors, so the results outlive the rank.
"""

from __future__ import annotations

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime import checkpoint_io
from conveyor.runtime.losses import TokenCrossEntropy
from tests.models import _lm
from tests.runtime import _models

LR = 0.1


def _model(cfg: dict):
    if cfg["model"] == "tied":
        return _lm.tied_lm(seed=cfg.get("seed", 0), depth=3)
    return _models.mlp(3, seed=cfg.get("seed", 0))


def _batch(cfg: dict, B: int, seed: int):
    if cfg["model"] == "tied":
        return _lm.padded_batch(B, seed=seed)
    return _models.batch(B, seed=seed)


def _loss(cfg: dict):
    return TokenCrossEntropy() if cfg["model"] == "tied" else _models.loss_fn


def _reference(cfg: dict, B: int, seed: int, steps: int):
    """The unsplit model trained on the global batches with plain SGD: per step
    (loss, {name: grad}) and the final {name: weight}."""
    model = _model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = _loss(cfg)
    out = []
    for k in range(steps):
        x, y = _batch(cfg, B, seed + k)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if cfg["model"] == "tied":
            loss = loss / loss_fn.normalizer(y)
        loss.backward()
        if cfg.get("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        out.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return out, {n: p.detach().clone() for n, p in model.named_parameters()}


def _pipe(cfg: dict, ctx, dp: int):
    model = _model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[dict] = []
    config = PipelineConfig(dp_overlap=cfg.get("overlap", True), max_grad_norm=cfg.get("clip"))
    pipe = Pipeline(model, loss_fn=_loss(cfg),
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=LR),
                    schedule=cfg["schedule"], microbatches=cfg.get("M", 2), ctx=ctx, dp=dp,
                    config=config,
                    before_step=lambda p: seen.append(
                        {names[id(q)]: q.grad.clone() for q in p.params}))
    return pipe, names, seen


def _err(got: dict, want: dict) -> float:
    assert got.keys() <= want.keys() and got
    return max((got[n] - want[n]).abs().max().item() for n in got)


def exact_job(ctx, configs: list[dict]) -> list[dict]:
    """Train each configuration a few steps at dp x (world / dp); return per
    configuration the worst loss, gradient and weight error against the
    unsplit model, the losses, and how many buckets started during the
    backward."""
    torch.set_num_threads(1)
    results = []
    for cfg in configs:
        B, steps, seed = cfg.get("B", 8), cfg.get("steps", 2), cfg.get("data_seed", 1)
        ref, ref_w = _reference(cfg, B, seed, steps)
        pipe, names, seen = _pipe(cfg, ctx, cfg["dp"])
        early, losses = [], []
        for k in range(steps):
            x, y = _batch(cfg, B, seed + k)
            losses.append(pipe.step(x, y).loss)
            early.append(pipe.dp_sync.early if pipe.dp_sync is not None else 0)
        weights = {names[id(p)]: p.detach() for p in pipe.params}
        if not steps:
            results.append({"id": cfg["id"]})
        else:
            results.append({
                "id": cfg["id"], "losses": losses,
                "loss_err": max(abs(a - r[0]) for a, r in zip(losses, ref)),
                "grad_err": max(_err(g, r[1]) for g, r in zip(seen, ref)),
                "weight_err": _err(weights, ref_w), "n_params": len(weights),
                "early": early, "dp_rank": pipe.ctx.dp_rank, "pp_rank": pipe.ctx.rank,
                "local_stages": sum(1 for m in pipe.stages.values()
                                    if any(True for _ in m.parameters()))})
        if cfg.get("save"):
            pipe.save(cfg["save"])
            results[-1]["saved"] = _weights(pipe)
        if cfg.get("load"):  # a checkpoint saved elsewhere: load and compare
            fresh, _, _ = _pipe({**cfg, "seed": 7}, ctx, cfg["dp"])
            fresh.load(cfg["load"])
            results[-1]["loaded"] = _weights(fresh)
    return results


def _weights(pipe) -> dict[str, list]:
    names = checkpoint_io.stage_names(pipe)
    return {names[s][k]: v.tolist() for s, m in pipe.stages.items()
            for k, v in m.state_dict().items()}


def load_job(ctx, path: str, dps: list[int]) -> dict:
    """Load the checkpoint at ``path`` at each dp (P = world / dp); this rank's
    weights per dp."""
    torch.set_num_threads(1)
    out = {}
    for dp in dps:
        pipe, _, _ = _pipe({"model": "mlp", "schedule": "1f1b", "seed": 7}, ctx, dp)
        pipe.load(path)
        out[dp] = _weights(pipe)
    return out
