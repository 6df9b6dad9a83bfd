"""Cut a model into stages: contiguous blocks of its layers.

The counting (how many layers per stage) lives in ``conveyor.partition``,
without torch; this module applies it to modules.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Sequence

import torch
from torch import nn

from conveyor.errors import PartitionError
from conveyor.partition import resolve_balance, stage_ranges, uniform_balance

__all__ = ["SequentialStage", "split_model", "split_for", "layers_of", "fingerprint", "accepts",
           "side_for"]


def accepts(module: nn.Module) -> set[str] | None:
    """Keyword names the module's forward takes (None: any, it has **kwargs)."""
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def side_for(allowed: set[str] | None, side: dict) -> dict:
    """The side inputs a forward with keyword names ``allowed`` takes."""
    return side if allowed is None else {k: v for k, v in side.items() if k in allowed}


class SequentialStage(nn.Sequential):
    """A block of consecutive layers that behaves exactly like that slice of the
    original ``nn.Sequential``: called with several tensors (a tuple that crossed
    the cut), it hands the tuple to its first layer as one argument, as the
    unsplit model would have. Side inputs (keyword arguments, e.g.
    ``attention_mask``) go to each layer whose forward names them (or takes
    ``**kwargs``)."""

    def forward(self, *args, **side):
        x = args[0] if len(args) == 1 else args
        if not side:
            for layer in self:
                x = layer(x)
            return x
        known = self.__dict__.setdefault("_accepts", {})  # not a module attribute
        for layer in self:
            if id(layer) not in known:
                known[id(layer)] = accepts(layer)
            x = layer(x, **side_for(known[id(layer)], side))
        return x


def layers_of(model) -> list[nn.Module]:
    """The layers of an ``nn.Sequential``, ``nn.ModuleList`` or list of modules.

    Raises PartitionError for anything else (a model whose forward is not a
    plain chain of its children cannot be cut by position).
    """
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        layers = list(model)
    elif isinstance(model, (list, tuple)):
        layers = list(model)
    else:
        raise PartitionError(
            f"cannot cut a {type(model).__name__} into stages by position; pass an "
            f"nn.Sequential or a list of layers, or build the stages yourself and use "
            f"Pipeline.from_stages")
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise PartitionError(f"layer {i} is a {type(layer).__name__}, not an nn.Module")
    return layers


def split_model(model, stages: int, *, balance: Sequence[int] | None = None
                ) -> list[SequentialStage]:
    """Cut ``model`` (L layers) into ``stages`` contiguous stages.

    ``balance`` gives the layer count of each stage; without it the seed's
    uniform rule applies (``conveyor.partition.uniform_balance``: k = L // S
    each, one more on each of the first L % S stages). The stages share the
    layer objects with ``model`` (no copy).

    Raises PartitionError naming the numbers for L < stages, a balance that
    does not sum to L or has the wrong length, or an empty stage.
    """
    layers = layers_of(model)
    bal = resolve_balance(len(layers), stages, balance)
    return [SequentialStage(*layers[r.start:r.stop]) for r in stage_ranges(bal)]


def split_for(model, schedule, balance: Sequence[int] | None = None) -> list[SequentialStage]:
    """``split_model`` into ``schedule``'s S stages. Where the schedule puts
    several stages on a rank (V or loop placement), a split that does not fit
    raises PartitionError saying so and naming counts that do."""
    try:
        return split_model(model, schedule.S, balance=balance)
    except PartitionError as e:
        S, P = schedule.S, schedule.P
        if S == P:
            raise
        L = len(layers_of(model))
        where = ("stages r and 2P-1-r on rank r" if tuple(schedule.placement) ==
                 tuple(range(P)) + tuple(reversed(range(P))) else "stage s on rank s % P")
        fix = (f"give {S} counts summing to {L}, e.g. balance={uniform_balance(L, S)}, or "
               f"leave balance out" if L >= S else
               f"use a model of at least {S} layers, at most {L // (S // P)} ranks, or a "
               f"schedule with one stage per rank (1f1b, zb-h1)")
        raise PartitionError(
            f"{e}. Schedule {schedule.name!r} places {S // P} stages on each of its {P} ranks "
            f"({where}), so the model is cut into S = {S} stages, not {P}: {fix}") from None


def parameters_of(modules) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def fingerprint(model) -> str:
    """A short hash of each layer's class and parameter shapes: two models with
    the same fingerprint cut the same way."""
    parts = []
    for layer in layers_of(model):
        shapes = [tuple(p.shape) for p in layer.parameters()]
        parts.append(f"{type(layer).__name__}{shapes}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
