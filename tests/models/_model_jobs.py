"""Rank jobs: GPT and HF families pipelined against the unsplit model, with
padded token-mean batches and the attention mask as a side input."""

from __future__ import annotations

import torch

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.runtime.execute.split import build_stage, chain_pieces, param_bytes, split_by_names, \
    stage_names
from conveyor.runtime.train.tied import find_shared
from tests.models import _families as fam
from tests.runtime._jobs import count_traffic
from tests.runtime._models import rel_err


def _build(cfg, ctx):
    """(pipeline, reference, bytes of parameters this rank materialised for its stages)."""
    make = fam.factory(cfg["family"])
    kw = dict(loss_fn=TokenCrossEntropy(), schedule=cfg["schedule"], microbatches=cfg["M"],
              optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), ctx=ctx,
              config=PipelineConfig(loss_reduction="sum"))
    points = fam.split_points(cfg["family"], ctx.world_size)
    if cfg.get("build") == "meta":
        # Each rank builds only its stages, weights from a seed; the tie is
        # declared from the meta-device model (no memory).
        with torch.device("meta"):
            skeleton = make()
        pieces = [n for n, _ in chain_pieces(skeleton)]
        groups = stage_names(pieces, split_points=points)
        tied = [[f"{s}.{n}" for s, n in g]
                for g in find_shared(split_by_names(skeleton, split_points=points))]
        pipe = Pipeline.from_stages(lambda s: build_stage(make, groups[s], seed=7), tied=tied,
                                    **kw)
        mine = param_bytes(pipe.stages.values())
        ref = build_stage(make, pieces, seed=7)
        return pipe, ref, mine, sum(p.numel() * p.element_size() for p in skeleton.parameters())
    torch.manual_seed(3)
    model = make()
    torch.manual_seed(3)
    ref = make()
    pipe = Pipeline.from_stages(split_by_names(model, split_points=points), **kw)
    return pipe, ref, None, None


def model_job(ctx, configs: list[dict]) -> list[dict]:
    out = []
    for cfg in configs:
        pipe, ref, mine, total = _build(cfg, ctx)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        names = sorted({n for st in pipe.stages.values() for n, _ in st.named_parameters()})
        row = {"id": cfg["id"], "rank": ctx.rank, "loss_err": 0.0, "grad_err": 0.0,
               "param_err": 0.0, "names": names, "param_bytes": mine, "total_bytes": total,
               "steps": [], "ties": [str(t) for t in pipe.loop.tied.mine]}
        for k in range(cfg.get("steps", 2)):
            ids, mask, y = fam.lm_batch(8, seed=k + 1)
            with count_traffic() as traffic:
                res = pipe.step(ids, y, side={"attention_mask": mask})
            opt.zero_grad()
            ref_loss = TokenCrossEntropy()(ref(ids, attention_mask=mask), y) / (y != -100).sum()
            ref_loss.backward()
            row["loss_err"] = max(row["loss_err"], abs(res.loss - ref_loss.item()) / ref_loss.item())
            for st in pipe.stages.values():
                for n, p in st.named_parameters():
                    row["grad_err"] = max(row["grad_err"], rel_err(p.grad, ref.get_parameter(n).grad))
            opt.step()
            for st in pipe.stages.values():
                for n, p in st.named_parameters():
                    row["param_err"] = max(row["param_err"],
                                           rel_err(p.detach(), ref.get_parameter(n).detach()))
            row["steps"].append({**res.stats, **traffic})
        out.append(row)
    return out
