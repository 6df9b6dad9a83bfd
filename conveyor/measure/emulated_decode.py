"""Emulated device time for decoding: a layer takes a fixed time per token.

A decode step on an accelerator is bound by reading the weights and the KV
cache, not by the batch: a forward of T new tokens per sequence takes about
T times one token's time, whatever the number of sequences. These layers
behave that way without using the CPU (as ``conveyor.measure.emulated``:
the real work is one element-wise ``x * w + b``, and the rest of the time
is a sleep that holds no core), so P ranks fit on a 2-core machine and each
sees its own "device".

``EmulatedDecodeLayer`` keeps its inputs per lane in the ``cache=`` side
input, as an attention layer keeps keys and values, so the KV memory and
its counter behave as for a real model; its output at a position depends on
that position's input only, so decoding with a cache is exact.
``emulated_decoder(P, ...)`` builds the stages of a whole model: an embedding
on the first stage, ``layers`` emulated layers split evenly, a linear head on
the last.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from conveyor.checks import check_int
from conveyor.errors import PipelineError
from conveyor.measure.emulated import _sleep_until
from conveyor.runtime.execute.stages import SequentialStage

__all__ = ["EmulatedDecodeLayer", "emulated_decoder", "DecodeEmbed", "DecodeHead"]


class _Kept:
    """One lane's inputs to one layer, (n, t, width), grown per forward."""

    def __init__(self):
        self.x = None

    def add(self, x: torch.Tensor) -> None:
        self.x = x if self.x is None else torch.cat([self.x, x], dim=1)


class EmulatedDecodeLayer(nn.Module):
    """``x * w + b`` taking ``per_token`` seconds per token of the forward
    (T for a (n, T, width) input), with its inputs kept per lane in ``cache``."""

    decodes = "cache"

    def __init__(self, width: int, per_token: float):
        super().__init__()
        check_int(width, "emulated layer width", error=PipelineError)
        if isinstance(per_token, bool) or not isinstance(per_token, (int, float)) \
                or not 0 <= per_token < 60:
            raise PipelineError(f"per_token={per_token!r} s is not valid; give seconds >= 0, "
                                f"e.g. 0.005")
        self.per_token = float(per_token)
        self.kv_width = width
        self.weight = nn.Parameter(1 + 0.01 * torch.randn(width))
        self.bias = nn.Parameter(0.01 * torch.randn(width))

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        t0 = time.perf_counter()
        y = torch.addcmul(self.bias, x, self.weight)
        if cache is not None:
            cache.slot(self, _Kept).add(x.detach())
        _sleep_until(t0 + self.per_token * x.shape[1])
        return y


class DecodeEmbed(nn.Embedding):
    """Token ids -> (n, T, width); each position alone."""

    decodes = "local"


class DecodeHead(nn.Linear):
    """(n, T, width) -> logits; each position alone."""

    decodes = "local"


def emulated_decoder(P: int, *, layers: int, width: int, vocab: int, per_token: float,
                     seed: int = 0) -> list[SequentialStage]:
    """P stages: [embed, layers/P emulated layers], ..., [layers/P, head].
    The same seed gives the same weights on every rank."""
    check_int(P, "P", what="pipeline stages", error=PipelineError)
    check_int(layers, "layers", error=PipelineError)
    if layers % P:
        raise PipelineError(f"{layers} emulated layers do not split evenly over {P} stages; "
                            f"give a multiple of {P}")
    torch.manual_seed(seed)
    embed = DecodeEmbed(vocab, width)
    body = [EmulatedDecodeLayer(width, per_token) for _ in range(layers)]
    head = DecodeHead(width, vocab)
    k = layers // P
    stages = []
    for s in range(P):
        mods = ([embed] if s == 0 else []) + body[s * k:(s + 1) * k] + \
            ([head] if s == P - 1 else [])
        stages.append(SequentialStage(*mods))  # passes cache= to the layers
    return stages
