"""The models the docs and benchmarks use, installed with the package so that
every walk-through works after ``pip install``.

Each factory returns what ``conveyor profile --model
conveyor.models.examples:NAME`` takes: ``(model, sample_batch)``, or
``(model, sample_batch, loss_fn, targets)`` to time the loss too.

- ``unbalanced``: 14 emulated device layers of unequal cost (an
  embedding-heavy first layer of 8 units, 8 narrow blocks of 1, 4 wide
  blocks of 2, a head of 3), batch 64: the planner's walk-through and
  ``benchmarks/bench_planner.py``. Each layer sleeps, holding no core, for
  units x (0.05 ms + 0.6 ms x samples) forward and twice that backward, as a
  GPU kernel's time grows with its batch; profiling it takes 2-3 minutes.
- ``unbalanced_small``: the same 14 layers at 1/50 of the time, batch 16;
  profiled in a few seconds (the docs' quick version).
- ``real_mlp``, ``real_mlp_with_loss``: an 11-layer float32 MLP with an
  embedding, real compute (``benchmarks/bench_planner_real.py``).
- ``mlp``, ``random_batch``: a small MLP and a seeded batch per step, for
  ``conveyor.runtime.measure`` and quick tries.
"""

from __future__ import annotations

import torch
from torch import nn

from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes

__all__ = ["SampleTimedLayer", "unbalanced", "unbalanced_split", "unbalanced_small",
           "real_mlp", "real_mlp_with_loss", "mse", "real_targets", "mlp", "random_batch",
           "UNITS"]

UNITS = [8] + [1] * 8 + [2] * 4 + [3]      # per layer: units of time
FIXED, PER_SAMPLE = 0.00005, 0.0006        # seconds per unit: per call, per sample
WIDTH, BATCH = 256, 64


class SampleTimedLayer(EmulatedLayer):
    """An emulated layer whose forward takes units x (fixed + per_sample x n)
    seconds for a batch of n, its backward twice that; with ``split`` the
    input and weight gradients are separate autograd nodes (I and W half of
    B each, as for a matrix multiply)."""

    def __init__(self, units: float, split: bool = False, *, width: int = WIDTH,
                 fixed: float = FIXED, per_sample: float = PER_SAMPLE):
        super().__init__(width, EmulatedTimes(), split_backward=split)
        self.units, self.fixed, self.per_sample = units, fixed, per_sample

    def forward(self, x):
        f = self.units * (self.fixed + self.per_sample * x.shape[0])
        self.times = EmulatedTimes(f, 2 * f)
        return super().forward(x)


def unbalanced(seed: int = 0, split: bool = False):
    """(model, sample batch): the unequal 14-layer model and one step's
    input, a batch of 64 x 256."""
    torch.manual_seed(seed)
    return (nn.Sequential(*[SampleTimedLayer(u, split) for u in UNITS]),
            torch.randn(BATCH, WIDTH))


def unbalanced_split(seed: int = 0):
    """``unbalanced`` with separate I and W (for the zero-bubble schedules)."""
    return unbalanced(seed, split=True)


def unbalanced_small(seed: int = 0):
    """``unbalanced``'s 14 layers at 1/50 of the time, a batch of 16 x 64:
    the same shape of problem, profiled in seconds."""
    torch.manual_seed(seed)
    layers = [SampleTimedLayer(u, width=64, fixed=FIXED / 50, per_sample=PER_SAMPLE / 50)
              for u in UNITS]
    return nn.Sequential(*layers), torch.randn(16, 64)


# real_mlp: token ids -> embedding -> Linear+GELU blocks, one of them wide
REAL_BATCH, TOKENS, VOCAB, EMB, NARROW, WIDE = 512, 64, 8192, 16, 256, 1024


class Embed(nn.Module):
    """Token ids (n, TOKENS) -> their embeddings, flattened (n, TOKENS*EMB)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCAB, EMB)

    def forward(self, ids):
        return self.table(ids).flatten(1)


def _block(a: int, b: int) -> nn.Module:
    return nn.Sequential(nn.Linear(a, b), nn.GELU())


def real_mlp(seed: int = 0):
    """(model, sample batch): 11 layers of unequal real compute (an
    embedding, narrow and wide Linear+GELU blocks, a 4x-wide head) and a
    batch of 512 token-id rows."""
    torch.manual_seed(seed)
    layers = [Embed(), _block(TOKENS * EMB, NARROW)]
    layers += [_block(NARROW, NARROW) for _ in range(3)]
    layers += [_block(NARROW, WIDE), _block(WIDE, WIDE), _block(WIDE, NARROW)]
    layers += [_block(NARROW, NARROW) for _ in range(2)]
    layers += [nn.Sequential(nn.Linear(NARROW, 4 * NARROW), nn.GELU(),
                             nn.Linear(4 * NARROW, NARROW))]          # the head
    ids = torch.randint(0, VOCAB, (REAL_BATCH, TOKENS))
    return nn.Sequential(*layers), ids


def mse(out, y):
    """Mean squared error: the loss of the ``real_mlp`` and ``unbalanced`` runs."""
    return ((out - y) ** 2).mean()


def real_targets():
    """The fixed random targets of every ``real_mlp`` step (and of its profile's loss)."""
    return torch.randn(REAL_BATCH, NARROW, generator=torch.Generator().manual_seed(1))


def real_mlp_with_loss(seed: int = 0):
    """(model, sample batch, loss_fn, targets): ``real_mlp`` with the run's
    loss, for ``conveyor profile --model ...:real_mlp_with_loss``."""
    model, ids = real_mlp(seed)
    return model, ids, mse, real_targets()


def mlp(width: int = 64, depth: int = 8, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """``depth`` Linear+ReLU blocks of ``width`` features and a Linear head to
    ``classes``: depth + 1 layers, the same weights for the same ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU())
                           for _ in range(depth)], nn.Linear(width, classes))


def random_batch(step: int, batch: int = 32, width: int = 64, classes: int = 10):
    """Step ``step``'s (inputs, targets) for ``mlp``: the same on every rank
    (seeded by the step); the target is the largest of the first ``classes``
    features, so the model can learn it."""
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(step))
    return x, x[:, :classes].argmax(1)
