"""Rank jobs for auxiliary losses made on any stage (``execute.aux``): a
chain of layers that each add a penalty on their output, and take the
attention mask as a side input, through ``Pipeline(nn.Sequential(...))``."""

from __future__ import annotations

import math

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute.aux import add_aux_loss, collect_aux
from tests.runtime._models import rel_err

D, T = 6, 5


class AuxLayer(nn.Module):
    """tanh(Linear(x)), zeroed on padding, that adds ``coef`` x the mean
    square of its output (a mean over the micro-batch) as auxiliary loss
    ``name``; ``nan`` poisons it."""

    def __init__(self, name: str, coef: float):
        super().__init__()
        self.lin, self.name, self.coef, self.nan = nn.Linear(D, D), name, coef, False

    def forward(self, x, attention_mask=None):
        y = torch.tanh(self.lin(x))  # (n, T, D)
        if attention_mask is not None:
            y = y * attention_mask[..., None]
        value = self.coef * y.pow(2).mean()
        add_aux_loss(self.name, value * math.nan if self.nan else value)
        return y


def model() -> nn.Sequential:
    torch.manual_seed(0)
    layers = [AuxLayer(f"a{i}", 0.1 * (i + 1)) for i in range(4)]
    return nn.Sequential(*layers, nn.Linear(D, D)).double()


def batch(B: int, k: int):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (B, 1), generator=g)).long()
    return x, y, mask


def reference(ref: nn.Sequential, x, y, mask):
    """(main loss, {name: aux}) of the unsplit model on the whole batch; each
    layer gets the mask if its forward takes it (as a stage hands it)."""
    with collect_aux() as terms:
        h = x
        for layer in ref:
            h = layer(h, attention_mask=mask) if isinstance(layer, AuxLayer) else layer(h)
    return nn.functional.mse_loss(h, y), dict(terms)


def train_job(ctx, cases: list[dict]) -> list[dict]:
    """Per case: 3 SGD steps pipelined against the unsplit model."""
    torch.set_num_threads(1)
    out = []
    for case in cases:
        pipe = Pipeline(model(), loss_fn=nn.functional.mse_loss, schedule=case["schedule"],
                        microbatches=4, ctx=ctx, checkpoint=case.get("checkpoint", "none"),
                        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5),
                        config=PipelineConfig(loss_scale=case.get("scale")))
        ref = model()
        opt = torch.optim.SGD(ref.parameters(), lr=0.5)
        row = {"id": case["id"], "rank": ctx.rank, "loss_err": 0.0, "aux_err": 0.0,
               "grad_err": 0.0, "param_err": 0.0, "names": set(), "aux_loss": []}
        by_name = dict(ref.named_parameters())
        for k in range(3):
            x, y, mask = batch(10, k)  # micro-batches of 3, 3, 2, 2
            res = pipe.step(x, y, side={"attention_mask": mask})
            opt.zero_grad()
            main, aux = reference(ref, x, y, mask)
            total_aux = sum(aux.values())
            (main + total_aux).backward()
            row["loss_err"] = max(row["loss_err"], abs(res.loss - main.item()) / main.item())
            row["aux_err"] = max(row["aux_err"],
                                 abs(res.aux_loss - total_aux.item()) / total_aux.item())
            for name, v in res.aux.items():  # this rank's, by name
                row["aux_err"] = max(row["aux_err"], abs(v - aux[name].item()) / aux[name].item())
            row["names"] |= set(res.aux)
            row["aux_loss"].append(res.aux_loss)
            pairs = [(p, by_name[n]) for n, p in _named(pipe)]
            for p, q in pairs:
                row["grad_err"] = max(row["grad_err"], rel_err(p.grad, q.grad))
            opt.step()
            for p, q in pairs:
                row["param_err"] = max(row["param_err"], rel_err(p.detach(), q.detach()))
        row["names"] = sorted(row["names"])
        out.append(row)
    return out


def _named(pipe):
    """(unsplit name, parameter) of this rank's stages."""
    out = []
    for s, st in pipe.stages.items():
        st = getattr(st, "stage", st)  # seen through activation checkpointing
        layers = pipe.layer_names[s]
        for local, p in st.named_parameters():
            head, _, rest = local.partition(".")
            out.append((f"{layers[int(head)]}.{rest}", p))
    return out


def nan_job(ctx, policy: str) -> dict:
    """fp32; at step 1 the auxiliary loss of layer a0 (stage 0) is NaN."""
    torch.set_num_threads(1)
    m = model()
    pipe = Pipeline(m, loss_fn=nn.functional.mse_loss, schedule="1f1b", microbatches=4,
                    ctx=ctx, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5),
                    config=PipelineConfig(nonfinite=policy, timeout_s=20))
    skipped = []
    for k in range(3):
        m[0].nan = k == 1
        x, y, mask = batch(8, k)
        skipped.append(pipe.step(x, y, side={"attention_mask": mask}).skipped)
    return {"skipped": skipped}


def export_job(ctx, _arg) -> dict:
    """``export_state_dict`` of four pipelines of the same weights: through
    Pipeline(nn.Sequential), from_stages of plain stages (with and without
    ``rename``), and the project's GPT cut by name and built per rank."""
    from conveyor.models import GPT, GPTConfig
    from conveyor.runtime.execute.split import build_stage, chain_pieces, split_by_names, \
        stage_names
    from conveyor.runtime.execute.stages import split_model
    from conveyor.runtime.train.losses import TokenCrossEntropy

    torch.set_num_threads(1)
    kw = dict(loss_fn=nn.functional.mse_loss, optimizer=None, schedule="1f1b", microbatches=2,
              ctx=ctx)
    out = {"sequential": Pipeline(model(), **kw).export_state_dict(),
           "plain": Pipeline.from_stages(split_model(model(), 2), **kw).export_state_dict(),
           "renamed": Pipeline.from_stages(
               split_model(model(), 2), **kw).export_state_dict(
                   rename=lambda s, key: f"{int(key[0]) + 3 * s}{key[1:]}")}
    cfg = GPTConfig(vocab=11, context=8, layers=4, heads=2, width=8)
    make = lambda: GPT(cfg).double()  # noqa: E731
    kw["loss_fn"] = TokenCrossEntropy()
    torch.manual_seed(1)
    out["gpt"] = Pipeline.from_stages(split_by_names(make(), split_points=["blocks.2"]),
                                      **kw).export_state_dict()
    groups = stage_names([n for n, _ in chain_pieces(make())], split_points=["blocks.2"])
    tied = [["0.embed.wte.weight", "1.head.lm_head.weight"]]
    out["gpt_built"] = Pipeline.from_stages(lambda s: build_stage(make, groups[s], seed=4),
                                            tied=tied, **kw).export_state_dict()
    return out
