"""Rank jobs: every Hugging Face family pipelined against the model's own
forward and training (float64), and the export of an adapted pipeline."""

from __future__ import annotations

import torch

from conveyor.models.hf import causal_lm_chain
from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.execute.split import split_by_names
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.schedule import build_schedule
from tests.models import _hf_families as H
from tests.runtime._models import rel_err

B = 8


def _pipe(ctx, chain, schedule: str, M: int):
    S = build_schedule(schedule, ctx.world_size, M).S
    return Pipeline.from_stages(
        split_by_names(chain, split_points=H.split_points(S)), loss_fn=TokenCrossEntropy(),
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), schedule=schedule, microbatches=M,
        ctx=ctx, config=PipelineConfig(loss_reduction="sum"))


def _reference(ref, family, ids, mask, y, M):
    """(main loss, router loss) of the model's own forward, called once per
    micro-batch as gradient accumulation would: the token mean of the whole
    batch (each micro-batch's token sum over the batch's count) and, for
    routed families, the router loss the model adds to ``.loss``, weighted by
    the micro-batch's share. Per micro-batch, because several families
    compute in float32 inside a float64 model (Gemma's RMSNorm, the MoE
    routers' softmax): a last-bit change of a float64 value (BLAS rounds the
    whole batch's shapes differently) can move a float32 rounding by one
    step. Gradients of the whole batch against its two halves, one process:
    1.3e-7 to 2.4e-7 (relative) for Gemma 1-3, 4e-16 for Llama; a pipelined
    Mixtral against the whole batch: 6.8e-8."""
    count = (y != -100).sum()
    coef, start = getattr(ref.config, "router_aux_loss_coef", 0.0), 0
    main = aux = torch.zeros((), dtype=torch.float64)
    for n in microbatch_sizes(ids.shape[0], M):
        part = slice(start, start + n)
        out = ref(input_ids=ids[part], attention_mask=mask[part])
        main = main + TokenCrossEntropy()(out.logits, y[part]) / count
        if family in H.ROUTED:
            aux = aux + (coef * out.aux_loss).to(torch.float64) * (n / ids.shape[0])
        start += n
    return main, aux


def family_job(ctx, configs: list[dict]) -> list[dict]:
    """Per config: 2 SGD steps of the family's chain, pipelined, against the
    HF model trained alone; errors of the losses, gradients and weights."""
    out = []
    for cfg in configs:
        family, M = cfg["family"], cfg["M"]
        torch.manual_seed(3)
        chain = causal_lm_chain(H.hf_model(family))
        torch.manual_seed(3)
        ref = H.hf_model(family)
        pipe = _pipe(ctx, chain, cfg["schedule"], M)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        hf_name = chain.export_names()
        row = {"id": cfg["id"], "rank": ctx.rank, "loss_err": 0.0, "aux_err": 0.0,
               "grad_err": 0.0, "param_err": 0.0, "aux": [], "verified": chain.verified,
               "checked": 0}
        for k in range(2):
            ids, mask, y = H.batch(B, seed=k + 1)
            res = pipe.step(ids, y, side={"attention_mask": mask})
            opt.zero_grad()
            main, aux = _reference(ref, family, ids, mask, y, M)
            (main + aux).backward()
            row["loss_err"] = max(row["loss_err"], abs(res.loss - main.item()) / main.item())
            if family in H.ROUTED:
                row["aux_err"] = max(row["aux_err"], abs(res.aux_loss - aux.item()) / aux.item())
            row["aux"].append(res.aux_loss)
            pairs = [(p, ref.get_parameter(hf_name[n][0]))
                     for st in pipe.stages.values() for n, p in st.named_parameters()]
            for p, q in pairs:
                row["grad_err"] = max(row["grad_err"], rel_err(p.grad, q.grad))
                row["checked"] += 1
            opt.step()
            for p, q in pairs:
                row["param_err"] = max(row["param_err"], rel_err(p.detach(), q.detach()))
        out.append(row)
    return out


def own_loss_job(ctx, family: str) -> dict:
    """M = 1: the pipeline's loss + router loss against the model's own
    ``.loss`` (labels shifted as the model shifts them)."""
    torch.manual_seed(3)
    chain = causal_lm_chain(H.hf_model(family))
    torch.manual_seed(3)
    ref = H.hf_model(family)
    pipe = _pipe(ctx, chain, "1f1b", 1)
    ids, mask, y = H.batch(B, seed=5)
    y[:, -1] = -100  # the model predicts nothing after the last token
    labels = torch.cat([torch.full((B, 1), -100), y[:, :-1]], dim=1)
    res = pipe.step(ids, y, side={"attention_mask": mask})
    own = ref(input_ids=ids, attention_mask=mask, labels=labels)
    return {"rank": ctx.rank, "loss": res.loss, "aux_loss": res.aux_loss,
            "own_loss": own.loss.item(),
            "own_aux": (ref.config.router_aux_loss_coef * own.aux_loss).item()}


def export_job(ctx, family: str) -> dict:
    """Train an adapted model 2 steps, then export it: the state dict on
    rank 0 (HF names) and the model trained alone, to compare."""
    torch.manual_seed(3)
    chain = causal_lm_chain(H.hf_model(family))
    torch.manual_seed(3)
    ref = H.hf_model(family)
    pipe = _pipe(ctx, chain, "1f1b", 2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for k in range(2):
        ids, mask, y = H.batch(B, seed=k + 1)
        pipe.step(ids, y, side={"attention_mask": mask})
        opt.zero_grad()
        _reference(ref, family, ids, mask, y, 2)[0].backward()
        opt.step()
    sd = pipe.export_state_dict()
    return {"rank": ctx.rank, "state": sd,
            "ref": {k: v.detach().clone() for k, v in ref.state_dict().items()}
            if ctx.rank == 0 else None}
