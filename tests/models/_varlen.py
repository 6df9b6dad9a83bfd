"""Rank job: sequence lengths that change between steps and between the
micro-batches of one step, against the unsplit model, with handshake bytes."""

from __future__ import annotations

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.runtime.execute.split import split_by_names
from tests.models import _families as fam
from tests.runtime._models import rel_err


class TrimEmbed(nn.Module):
    """Embeds only up to the longest sequence of its micro-batch, so each
    micro-batch's activations have their own length."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(fam.V, 8)

    def forward(self, ids, attention_mask=None):
        t = int(attention_mask.sum(1).max())
        return self.emb(ids[:, :t])  # (n, t, C)


class Trimmed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = TrimEmbed()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)])
        self.head = nn.Linear(8, fam.V)

    def forward(self, ids, attention_mask=None):
        h = self.embed(ids, attention_mask=attention_mask)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class TrimmedLoss(TokenCrossEntropy):
    def __call__(self, logits, targets):
        return super().__call__(logits, targets[:, :logits.shape[1]])


def varlen_job(ctx, configs: list[dict]) -> list[dict]:
    out = []
    for cfg in configs:
        torch.manual_seed(3)
        make = fam.factory("gpt") if cfg["model"] == "gpt" else (lambda: Trimmed().double())
        model = make()
        torch.manual_seed(3)
        ref = make()
        points = ["blocks.2"] if cfg["model"] == "gpt" else ["layers.1"]
        loss = TrimmedLoss() if cfg["model"] == "trim" else TokenCrossEntropy()
        pipe = Pipeline.from_stages(
            split_by_names(model, split_points=points), loss_fn=loss, schedule="1f1b",
            microbatches=cfg["M"], optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), ctx=ctx,
            config=PipelineConfig(loss_reduction="sum", varying_shapes=cfg.get("each", False)))
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        row = {"id": cfg["id"], "rank": ctx.rank, "err": 0.0, "meta": [], "p2p": []}
        for k, t in enumerate(cfg["lengths"]):
            ids, mask, y = fam.lm_batch(8, seed=k + 1, t=t)
            if cfg["model"] == "trim":  # micro-batches of 2: lengths 2..t differ between them
                mask = (torch.arange(t)[None, :] < torch.tensor([t, t, 3, 3, 5, 5, 2, 2])[:, None]
                        ).long()
                y[mask == 0] = -100
            res = pipe.step(ids, y, side={"attention_mask": mask})
            opt.zero_grad()
            ref_loss = loss(ref(ids, attention_mask=mask), y) / (y != -100).sum()
            ref_loss.backward()
            row["err"] = max(row["err"], abs(res.loss - ref_loss.item()) / ref_loss.item())
            for st in pipe.stages.values():
                for n, p in st.named_parameters():
                    row["err"] = max(row["err"], rel_err(p.grad, ref.get_parameter(n).grad))
            opt.step()
            row["meta"].append(res.stats["meta_bytes"])
            row["p2p"].append(res.stats["sent_bytes"])
        out.append(row)
    return out
