"""KV-cache lanes: what a stage keeps between the forwards of one lane.

A lane is one micro-batch of sequences decoded together. Every stage keeps,
per lane, the keys and values its attention layers computed for the tokens
seen so far, so that a decode step feeds only the new token through the
stage. The runtime makes one ``StageCache`` per (stage, lane) and passes it
to the stage as the side input ``cache=``; the pieces of a stage that
attend over the past (``decodes = "cache"``) keep their state in it:

    kv = cache.slot(self, make)    # this piece's state in this lane, made once

A piece is any module: the built-in GPT's ``Block`` keeps its own keys and
values (``conveyor.models.gpt.LayerCache``); the Hugging Face adapter's
``Block`` keeps the model's own cache class (``DynamicCache``), one per
stage and lane, shared by the stage's layers (``cache.slot("hf", ...)``).

Which stages can decode. A piece says how it computes a position, in a class
or instance attribute ``decodes``:

    "cache"  it attends over the past, through ``cache=`` (above);
    "local"  each position from that position's input (and ``position_ids``)
             alone: embeddings, norms, heads, element-wise layers.

A stage decodes when every piece says one of these; otherwise generate
refuses by the piece's name before any rank starts (``check_decodes``):
feeding one token through a piece that needs the past but keeps none would
compute something close but different.

Memory: ``StageCache.nbytes`` counts the bytes of every storage held, and
``cache_bytes`` sums a rank's lanes; the planner predicts the same number
(``conveyor.plan.kvmemory.kv_cache_bytes``) from what cached pieces declare:
``kv_width`` (elements per token and sequence) and ``kv_window`` (a sliding
layer's bound, or None). A piece may also declare ``max_positions``, the
longest sequence it can place (the model's context).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from conveyor.errors import PipelineError
from conveyor.plan.kvmemory import KVLayer

__all__ = ["StageCache", "cache_bytes", "check_decodes", "decode_pieces", "tensors_of",
           "kv_layers", "context_limit", "CACHE", "LOCAL"]

CACHE, LOCAL = "cache", "local"


class StageCache:
    """One lane's state on one stage: ``slot(key, make)`` returns the object
    kept under ``key`` (a piece, or a name pieces share), made by ``make()``
    the first time; ``nbytes()`` counts the tensors held."""

    def __init__(self, stage: int, lane: int):
        self.stage, self.lane = stage, lane
        self._slots: dict[Any, Any] = {}

    def slot(self, key, make: Callable[[], Any]):
        """The state kept under ``key``; ``make()`` builds it on first use."""
        # Keyed by identity for modules: a module may define __eq__/__hash__.
        k = ("id", id(key)) if isinstance(key, nn.Module) else ("key", key)
        got = self._slots.get(k)
        if got is None:
            got = self._slots[k] = make()
        return got

    def __len__(self) -> int:
        return len(self._slots)

    def nbytes(self) -> int:
        """Bytes of every storage the cache's tensors hold, each counted once
        (a view holds its whole storage); 0-dim counters left out."""
        seen: set[int] = set()
        total = 0
        for obj in self._slots.values():
            for t in tensors_of(obj):
                if t.ndim == 0 or t.numel() == 0:  # counters and empty placeholders
                    continue
                key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
                if key in seen:
                    continue
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return total


def tensors_of(obj, depth: int = 0) -> Iterable[torch.Tensor]:
    """The tensors an object holds: itself, the items of a list/tuple/dict,
    the attributes of an object (a HF cache's layers' keys and values).
    Bounded depth: a cache is a few levels deep."""
    if depth > 4 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from tensors_of(x, depth + 1)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from tensors_of(x, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        for x in vars(obj).values():
            yield from tensors_of(x, depth + 1)


def cache_bytes(caches: Iterable[StageCache]) -> int:
    """Bytes held by ``caches`` (a rank's lanes on its stages)."""
    return sum(c.nbytes() for c in caches)


def decode_pieces(stage: nn.Module) -> list[tuple[str, nn.Module]]:
    """The pieces of a stage that take its side inputs: a ``Chain``'s pieces,
    a ``SequentialStage``'s layers, else the stage itself."""
    order = getattr(stage, "order", None)
    if order is not None:  # execute.split.Chain
        return [(n, stage.get_submodule(n)) for n in order]
    if isinstance(stage, nn.Sequential):
        return [(str(i), m) for i, m in enumerate(stage)]
    return [(type(stage).__name__, stage)]


def check_decodes(stages: dict[int, nn.Module]) -> None:
    """Raise PipelineError naming the first piece of this rank's stages that
    does not say how it decodes (see the module docstring)."""
    for s, stage in sorted(stages.items()):
        for name, piece in decode_pieces(stage):
            how = getattr(piece, "decodes", None)
            if how in (CACHE, LOCAL):
                continue
            why = getattr(piece, "decode_refusal", None)
            raise PipelineError(
                f"stage {s} cannot generate: its piece {name!r} ({type(piece).__name__}) "
                + (why if why else
                   "does not say how it decodes one token at a time (decodes = 'cache' for a "
                   "layer that keeps its keys and values in cache=, 'local' for one that "
                   "computes each position alone)")
                + "; generate needs every piece of every stage to decode (see "
                "https://github.com/conveyor-pp/conveyor/blob/main/docs/generation.md)")


def kv_layers(stages: dict[int, nn.Module], itemsize: int) -> list[KVLayer] | None:
    """What this rank's cached pieces hold per token (``KVLayer``), for the
    planner's prediction; None when a cached piece does not declare its
    ``kv_width``."""
    out = []
    for _, stage in sorted(stages.items()):
        for _, piece in decode_pieces(stage):
            if getattr(piece, "decodes", None) != CACHE:
                continue
            width = getattr(piece, "kv_width", None)
            if not isinstance(width, int):
                return None
            out.append(KVLayer(width, itemsize, getattr(piece, "kv_window", None)))
    return out


def context_limit(stages: dict[int, nn.Module]) -> int | None:
    """The fewest positions any piece of this rank's stages can place
    (``max_positions``), or None when none declares it."""
    limits = [getattr(piece, "max_positions", None)
              for _, stage in sorted(stages.items()) for _, piece in decode_pieces(stage)]
    limits = [x for x in limits if isinstance(x, int) and x > 0]
    return min(limits) if limits else None
