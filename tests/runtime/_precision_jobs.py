"""Rank jobs and single-process references for the precision tests.

The model is a small pre-norm residual network over token ids (embedding,
residual MLP blocks with LayerNorm, a head), the shape of a transformer's
layer stack without attention: under bf16 autocast its Linear layers compute
in bf16 while LayerNorm and the residual stream stay float32, so what crosses
a cut is a float32 residual stream, the case ``boundary_dtype`` halves.

The reference runs the same unsplit model in one process under the same
policy (autocast around the layers, the loss from float32 logits) on the
same micro-batches, accumulating gradients micro-batch by micro-batch, and
rounds what crosses each cut between ranks to the boundary dtype and back,
forward and backward, as the pipeline's wire does (``RoundTrip``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.execute.stages import split_model
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.schedule import build_schedule
from tests.runtime import _ckpt_jobs

V, C, T, DEPTH = 48, 32, 12, 6  # vocabulary, width, tokens per sample, residual blocks
BATCH, M = 16, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.up = nn.Linear(C, 2 * C)
        self.down = nn.Linear(2 * C, C)

    def forward(self, x):  # (n, T, C) -> (n, T, C)
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, V)

    def forward(self, x):  # (n, T, C) -> (n, T, V)
        return self.out(self.norm(x))


def model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(V, C), *[Block() for _ in range(DEPTH)], Head())


def batch(k: int):
    g = torch.Generator().manual_seed(100 + k)
    x = torch.randint(0, V, (BATCH, T), generator=g)
    y = torch.randint(0, V, (BATCH, T), generator=g)
    y[:, -2:] = -100  # some ignored tokens: the normaliser is a token count
    return x, y


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


class _RoundTrip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.orig = x.dtype
        return x.to(dtype).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g.to(_RoundTrip.wire).to(ctx.orig), None


class RoundTrip(nn.Module):
    """What a cut between ranks does to a floating tensor: rounded to the
    boundary dtype on the way forward and its gradient on the way back."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        _RoundTrip.wire = self.dtype
        return _RoundTrip.apply(x, self.dtype)


def _crossing_cuts(schedule: str, P: int) -> list[int]:
    """Layer counts after which a cut crosses between ranks."""
    sched = build_schedule(schedule, P, M)
    sizes = [len(s) for s in split_model(model(), sched.S)]
    ends = [sum(sizes[:s + 1]) for s in range(sched.S - 1)]
    return [e for s, e in enumerate(ends) if sched.placement[s] != sched.placement[s + 1]]


def reference(schedule: str, P: int, *, precision: str, boundary, steps: int,
              scale: float = 1.0, clip: float | None = None, accumulate: int = 1) -> dict:
    """The single-process run the pipeline must match (see the module
    docstring): ``steps`` updates, each over ``accumulate`` batches, the loss
    multiplied by ``scale`` before each backward and the gradients divided by
    it after, then by ``accumulate``, then clipped to ``clip`` as the
    pipeline clips (the norm summed in float64)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    layers = list(model())
    narrow = boundary is not None and boundary != torch.float32
    cuts = set(_crossing_cuts(schedule, P)) if narrow else set()
    seq = []
    for i, layer in enumerate(layers):
        seq.append(layer)
        if i + 1 in cuts:
            seq.append(RoundTrip(boundary))
    net = nn.Sequential(*seq)
    params = list(net.parameters())
    opt = adam(params)
    loss_fn = TokenCrossEntropy()
    losses = []
    sizes = microbatch_sizes(BATCH, M)
    for u in range(steps):
        for k in range(u * accumulate, (u + 1) * accumulate):
            x, y = batch(k)
            w = 1.0 / loss_fn.normalizer(y)
            total = 0.0
            for xs, ys in zip(x.split(sizes), y.split(sizes)):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    out = net(xs)
                loss = loss_fn(out.float(), ys).reshape(()) * w
                (loss * scale if scale != 1.0 else loss).backward()
                total += float(loss.detach().double())
            losses.append(total)
        for p in params:
            if scale != 1.0:
                p.grad.mul_(1.0 / scale)
            if accumulate > 1:
                p.grad.div_(accumulate)
        if clip is not None:
            norm = math.sqrt(float(sum(p.grad.double().pow(2).sum() for p in params)))
            coef = clip / (norm + 1e-6)
            if coef < 1.0:
                for p in params:
                    p.grad.mul_(coef)
        opt.step()
        opt.zero_grad()
    mine = dict(zip([n for n, _ in model().named_parameters()], params))
    return {"losses": losses, "weights": {n: p.detach().tolist() for n, p in mine.items()}}


def train_job(ctx, cases: list[dict]) -> list[dict]:
    """Per case {schedule, precision, boundary, steps}: train a pipeline and
    return its losses, weights and the bytes its first step sent."""
    torch.set_num_threads(1)
    out = []
    for case in cases:
        cfg = PipelineConfig(precision=case["precision"], boundary_dtype=case["boundary"])
        pipe = Pipeline(model(), loss_fn=TokenCrossEntropy(), optimizer=adam,
                        schedule=case["schedule"], microbatches=M, ctx=ctx, config=cfg)
        losses, sent = [], []
        for k in range(case["steps"]):
            res = pipe.step(*batch(k))
            losses.append(res.loss)
            sent.append(res.stats["sent_bytes"])
        out.append({"losses": losses, "sent": sent, "weights": _ckpt_jobs.weights(pipe)})
    return out
