"""Rank jobs for the data-parallel tests: dp replicas of a pipeline, compared
with the unsplit model on the global batch (computed on every rank).

One launch runs every configuration; each returns floats (errors, losses),
never tensors, so the results outlive the rank.
"""

from __future__ import annotations

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train import checkpoint_io
from conveyor.runtime.train.losses import TokenCrossEntropy
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
    """The unsplit model trained on the global batches with plain SGD (an
    update every ``accumulate`` batches, on their mean gradient): the loss of
    every batch, the gradient of every update ({name: grad}), the final
    weights and the model."""
    model = _model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = _loss(cfg)
    k_acc = cfg.get("accumulate", 1)
    losses, grads = [], []
    for k in range(steps):
        x, y = _batch(cfg, B, seed + k)
        loss = _full_loss(cfg, model, x, y)
        (loss / k_acc).backward()
        losses.append(float(loss.detach()))
        if (k + 1) % k_acc == 0:
            if cfg.get("clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
    return losses, grads, {n: p.detach().clone() for n, p in model.named_parameters()}, model


def _full_loss(cfg, model, x, y):
    loss_fn = _loss(cfg)
    loss = loss_fn(model(x), y)
    return loss / loss_fn.normalizer(y) if cfg["model"] == "tied" else loss


def _pipe(cfg: dict, ctx, dp: int):
    model = _model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[dict] = []
    config = PipelineConfig(dp_overlap=cfg.get("overlap", True), max_grad_norm=cfg.get("clip"),
                            accumulate=cfg.get("accumulate", 1))
    mesh = None
    if cfg.get("mesh"):  # torch's own DeviceMesh instead of dp=
        from torch.distributed.device_mesh import init_device_mesh

        mesh, dp = init_device_mesh("cpu", (dp, 4 // dp), mesh_dim_names=("dp", "pp")), None
    if cfg.get("groups"):  # groups made by the caller, in the same order on every rank
        import torch.distributed as dist

        from conveyor.runtime.transport.mesh import from_groups

        pp = [dist.new_group([2 * d, 2 * d + 1]) for d in range(2)]
        dpg = [dist.new_group([p, 2 + p]) for p in range(2)]
        g = ctx.rank
        ctx, dp = from_groups(ctx, pp_group=pp[g // 2], dp_group=dpg[g % 2]), None
    pipe = Pipeline(model, loss_fn=_loss(cfg),
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=LR),
                    schedule=cfg["schedule"], microbatches=cfg.get("M", 2), ctx=ctx, dp=dp,
                    config=config, mesh=mesh,
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
        ref_losses, ref_grads, ref_w, ref_model = _reference(cfg, B, seed, steps)
        pipe, names, seen = _pipe(cfg, ctx, cfg["dp"])
        early, losses, timelines = [], [], []
        for k in range(steps):
            x, y = _batch(cfg, B, seed + k)
            res = pipe.step(x, y, record=cfg.get("record", False))
            losses.append(res.loss)
            early.append(pipe.dp_sync.early if pipe.dp_sync is not None else 0)
            if res.timeline is not None:
                timelines.append(sorted({e.rank for e in res.timeline.events}))
        weights = {names[id(p)]: p.detach() for p in pipe.params}
        if not steps:
            results.append({"id": cfg["id"]})
        else:
            results.append({
                "id": cfg["id"], "losses": losses,
                "loss_err": max(abs(a - r) for a, r in zip(losses, ref_losses)),
                "grad_err": max(_err(g, r) for g, r in zip(seen, ref_grads)),
                "updates": len(seen), "timelines": timelines,
                "eval_err": abs(pipe.evaluate(x, y)
                                - float(_full_loss(cfg, ref_model, x, y).detach())),
                "watch_rank": _watch_rank(),
                "weight_err": _err(weights, ref_w), "n_params": len(weights),
                "early": early, "dp_rank": pipe.ctx.dp_rank, "pp_rank": pipe.ctx.rank,
                "launcher": pipe.ctx.launcher,
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


def _watch_rank():
    from conveyor.runtime.procs import hang
    return None if hang._WATCH is None else hang._WATCH.rank


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
