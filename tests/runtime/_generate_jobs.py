"""Rank jobs of test_generate_failures.py: a rank that fails while decoding."""

from __future__ import annotations

import os

import torch

from conveyor.models.gpt import GPT, GPTConfig
from conveyor.runtime import Pipeline
from conveyor.runtime.execute.split import Chain, chain_pieces


class FailAt(torch.nn.Module):
    """Passes its input through; raises on its ``n``-th call (a decode round)."""

    decodes = "local"

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError(f"boom in call {self.n}")
        return x


def _tiny_gpt_with(ctx, pid_dir: str, name: str, layer, **kw) -> None:
    """P = 2, one lane: a tiny GPT whose stage 1 holds ``layer`` after its
    first block; writes this rank's pid, then generates 8 tokens."""
    with open(os.path.join(pid_dir, f"rank{ctx.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pieces = chain_pieces(GPT(GPTConfig(vocab=17, context=16, layers=2, heads=2, width=8)))
    stages = [Chain(pieces[:2]), Chain([pieces[2], (name, layer), pieces[3]])]
    pipe = Pipeline.from_stages(stages, loss_fn=torch.nn.functional.mse_loss, optimizer=None,
                                ctx=ctx, **kw)
    pipe.generate([[1, 2, 3], [4, 5]], 8, lanes=1)


def fail_job(ctx, pid_dir: str) -> None:
    """P = 2, one lane: stage 1 raises in round 3 (its third forward)."""
    _tiny_gpt_with(ctx, pid_dir, "fail", FailAt(3))


class SleepAt(FailAt):
    """Sleeps far past the hang watch's bound on its ``n``-th call."""

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            import time
            time.sleep(300)
        return x


def hang_job(ctx, pid_dir: str, timeout_s: float) -> None:
    """P = 2, one lane: stage 1 sleeps in round 3 (its third forward); rank 0
    waits for the token."""
    from conveyor.runtime import PipelineConfig

    _tiny_gpt_with(ctx, pid_dir, "sleep", SleepAt(3), config=PipelineConfig(timeout_s=timeout_s))
