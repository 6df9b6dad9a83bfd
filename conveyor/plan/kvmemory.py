"""The KV cache's bytes, as the runtime's counter sees them (no torch).

Decoding keeps, per lane and per attention layer, the keys and values of
the tokens fed so far (``conveyor.runtime.execute.kvcache``). A lane feeds
its prompt (padded to L tokens, in one or more prefill rounds), then one
token per step: ``fed`` lists the tokens of each round (L + N - 1 in all
for N new tokens: the last token is picked, never fed). After round j a
layer of a lane of n sequences holds

    n x fed_1..j x width x element bytes                 (full attention)
    n x (min(fed before j, window - 1) + fed_j) x ...    (sliding window)

where ``width`` is the key and value elements per token and sequence (2 x
key/value heads x head size; 2 x model width for the built-in GPT). A
sliding layer of the Hugging Face cache keeps the last window - 1 tokens
as a view of the round's keys, whose storage stays held: so a long prefill
round is its peak. The lanes of a rank move through the rounds together
(round-robin), so a rank's peak is the largest, over rounds, of the sum
over its layers and lanes: ``kv_cache_bytes``. The runtime counts the
storages its caches hold after every forward and reports the peak beside
this prediction (``Generation.stats``); a test holds them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["KVLayer", "kv_cache_bytes", "kv_tokens_within", "fed_tokens"]


@dataclass(frozen=True)
class KVLayer:
    """One cached layer: ``width`` elements per token and sequence (keys and
    values), ``itemsize`` bytes per element, ``window`` a sliding layer's
    window (None: full attention)."""

    width: int
    itemsize: int
    window: int | None = None


def fed_tokens(prompt: int, new_tokens: int, chunk: int | None = None) -> list[int]:
    """Tokens fed per round: the prompt of ``prompt`` tokens in chunks of
    ``chunk`` (None: one), then one per new token but the last."""
    if chunk is None or chunk >= prompt:
        pre = [prompt]
    else:
        pre = [min(chunk, prompt - a) for a in range(0, prompt, chunk)]
    return pre + [1] * (new_tokens - 1)


def _held(layer: KVLayer, fed: Sequence[int]) -> list[int]:
    """Tokens ``layer`` holds after each round."""
    out, total = [], 0
    for t in fed:
        if layer.window is None:
            out.append(total + t)
        else:
            out.append(min(total, layer.window - 1) + t)
        total += t
    return out


def kv_cache_bytes(layers: Sequence[KVLayer], lanes: Sequence[int], fed: Sequence[int]) -> int:
    """The most bytes ``layers`` hold at once for lanes of ``lanes``
    sequences each, feeding ``fed`` tokens per round (see the module
    docstring)."""
    if not fed or not layers:
        return 0
    n = sum(lanes)
    per_round = [0] * len(fed)
    for ly in layers:
        for j, tokens in enumerate(_held(ly, fed)):
            per_round[j] += n * tokens * ly.width * ly.itemsize
    return max(per_round)


def kv_tokens_within(layers: Sequence[KVLayer], lanes: Sequence[int], prompt: int,
                     chunk: int | None, budget: int, *, most: int = 1 << 16) -> int:
    """The most new tokens (at most ``most``) whose cache stays within
    ``budget``; 0 when not even the prompt fits."""
    def fits(n: int) -> bool:
        return kv_cache_bytes(layers, lanes, fed_tokens(prompt, n, chunk)) <= budget

    if not fits(1):
        return 0
    lo, hi = 1, most
    while lo < hi:  # the peak never falls as tokens are added: the last that fits
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
