"""Picking the next token from the last stage's logits: greedy, or sampled
with temperature, top-k and top-p, from seeded generators.

Every sequence has its own generator, seeded from ``seed`` and the
sequence's index in the batch, and draws one uniform number per token; the
token is where that number falls in the filtered distribution (inverse
CDF, in float64). So a sequence's tokens depend on its logits and the seed
only, not on which lane it shared, how many lanes or ranks ran, or the
order lanes finished in: the same call gives the same tokens at any P and
M, and one process can replay them (``pick`` on the unsplit model's logits).

Filtering, in Hugging Face's order: divide by ``temperature``; keep the
``top_k`` largest; keep the smallest set of the most likely tokens whose
probabilities sum to at least ``top_p`` (always at least one token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from conveyor.errors import PipelineError

__all__ = ["Sampling", "pick", "generators"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    temperature: 0 (default): greedy, the most likely token (the first of
                 equal ones); > 0: sampled from softmax(logits / temperature).
    top_k:       keep only the k most likely tokens (None: all).
    top_p:       keep the most likely tokens up to total probability p,
                 0 < p <= 1 (None or 1: all).
    seed:        seeds every sequence's generator (see the module docstring).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or t < 0:
            raise PipelineError(f"temperature={t!r}; give 0 for greedy decoding or a "
                                f"positive number to sample")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise PipelineError(f"top_k={k!r}; give a positive integer, or None for all tokens")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                              or not 0 < p <= 1):
            raise PipelineError(f"top_p={p!r}; give a probability in (0, 1], or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PipelineError(f"seed={self.seed!r}; give an integer")
        if t == 0 and (k is not None or p is not None):
            raise PipelineError("top_k/top_p filter a sampled distribution, but temperature=0 "
                                "decodes greedily; give a temperature > 0 to sample")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def generators(seed: int, rows: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sequence (its index in the batch)."""
    return [torch.Generator().manual_seed((seed * 1_000_003 + r) % (2 ** 63)) for r in rows]


def pick(logits: torch.Tensor, how: Sampling,
         gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The next token of each row of ``logits`` (n, V): (n,) int64.
    ``gens``: one generator per row (``generators``), needed to sample."""
    if how.greedy:
        return logits.argmax(dim=-1)
    if gens is None or len(gens) != logits.shape[0]:
        raise PipelineError("sampling needs one generator per sequence")
    x = logits.detach().to(torch.float64) / how.temperature  # (n, V)
    if how.top_k is not None and how.top_k < x.shape[-1]:
        kth = torch.topk(x, how.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if how.top_p is not None and how.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely tokens
        drop = before >= how.top_p  # keeps the first token always (before = 0)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.cumsum(-1)  # (n, V)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    u = u * cdf[:, -1]
    # The first token whose cumulative mass exceeds u (never a zero-probability one).
    idx = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1).to(logits.device)
