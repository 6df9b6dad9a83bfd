"""Models, layers and references shared by the runtime tests and their rank jobs.

Importable by rank processes (the launcher spawns fresh interpreters that
import ``tests.runtime._models`` by name).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 6
IN = 5
OUT = 3


def mlp(depth: int = 8, *, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """Linear(IN, W) + Tanh, (depth-1) x [Linear(W, W) + Tanh], Linear(W, OUT):
    2*depth + 1 layers, every cut carries a (n, W) activation (or (n, OUT))."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(IN, WIDTH), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    layers.append(nn.Linear(WIDTH, OUT))
    return nn.Sequential(*layers).to(dtype)


def even_chain(L: int = 16, *, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """L identical elementwise layers ``x * w + b`` on IN features (no emulated
    time): every cut, saved input and kept gradient is the same size, so a
    schedule's bytes follow its order alone. Its IN outputs serve as logits."""
    from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes

    torch.manual_seed(seed)
    return nn.Sequential(*[EmulatedLayer(IN, EmulatedTimes(0.0, 0.0))
                           for _ in range(L)]).to(dtype)


class Fork(nn.Module):
    """x -> (x, tanh(x) * 2): a tuple of two tensors crosses the next cut."""

    def forward(self, x):
        return x, torch.tanh(x) * 2


class Join(nn.Module):
    """(a, b) -> Linear(a) + b."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, pair):
        a, b = pair
        return self.fc(a) + b


def tuple_mlp(*, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """4 layers for 2 stages ([2, 2]): the cut carries the tuple from Fork."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, WIDTH), Fork(), Join(WIDTH),
                         nn.Linear(WIDTH, OUT)).to(dtype)


def batch(n: int, *, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g).to(dtype)
    y = torch.randint(0, OUT, (n,), generator=g)
    return x, y


def loss_fn(out, y):
    return nn.functional.cross_entropy(out, y)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (absolute when b is zero)."""
    d = (a - b).norm().item()
    n = b.norm().item()
    return d / n if n > 0 else d
