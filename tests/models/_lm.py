"""A tiny tied language model and padded token batches, for the rank jobs.

Importable by rank processes (spawned interpreters import it by name)."""

from __future__ import annotations

import torch
from torch import nn

V, C, T = 11, 6, 7  # vocabulary, width, longest sequence


class Embed(nn.Module):
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb

    def forward(self, idx):  # (n, T) -> (n, T, C)
        return self.emb(idx)


class TiedHead(nn.Module):
    """Logits through the embedding's own matrix (the same Parameter)."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.weight = emb.weight

    def forward(self, h):  # (n, T, C) -> (n, T, V)
        return h @ self.weight.t()


def tied_lm(*, dtype=torch.float64, seed: int = 0, depth: int = 3) -> nn.Sequential:
    """Embed, depth x [Linear, Tanh], TiedHead: 2 * depth + 2 layers, the first
    and the last sharing one weight."""
    torch.manual_seed(seed)
    emb = nn.Embedding(V, C)
    layers: list[nn.Module] = [Embed(emb)]
    for _ in range(depth):
        layers += [nn.Linear(C, C), nn.Tanh()]
    layers.append(TiedHead(emb))
    return nn.Sequential(*layers).to(dtype)


def padded_batch(n: int, *, seed: int = 1, t: int = T):
    """Token ids (n, t) and next-token targets with -100 after each sample's
    random length, so micro-batches hold different numbers of tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, t), generator=g)
    y = torch.randint(0, V, (n, t), generator=g)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    y[torch.arange(t)[None, :] >= lengths[:, None]] = -100
    return x, y


def token_mean(out, y):
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                       ignore_index=-100)
