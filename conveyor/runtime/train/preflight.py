"""What ``Pipeline.generate`` checks before any rank starts decoding.

Every rank holds the prompts and the options, so most errors are found
alike on every rank. What only one rank knows (whether its stages can
decode, the context its pieces can place, the KV cache its layers will
hold) is exchanged in one small all-gather under the hang watch, after
which every rank decides the same way and raises the same named error:

* a stage that cannot decode (``kvcache.check_decodes``): its message;
* a prompt longer than the model's context;
* max_new_tokens that would run past the context, or past
  ``cache_budget`` (bytes of KV cache per rank, predicted by
  ``conveyor.plan.kvmemory``), with the most that fits;
* more lanes than prompts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.plan.kvmemory import KVLayer, fed_tokens, kv_cache_bytes, kv_tokens_within
from conveyor.runtime.execute.kvcache import check_decodes, context_limit, kv_layers
from conveyor.runtime.execute.lanes import Prompts
from conveyor.runtime.procs.deadline import bounded

__all__ = ["ContextError", "CacheBudgetError", "LanesError", "preflight"]


class ContextError(PipelineError):
    """A prompt, or a prompt and its new tokens, do not fit the model's context."""


class CacheBudgetError(PipelineError):
    """The KV cache of a generate call would exceed ``cache_budget`` on a rank."""


class LanesError(PipelineError):
    """More lanes than prompts."""


def _mine(pipe, p: Prompts, sizes: list[int], fed: list[int]) -> dict:
    """This rank's part: its refusal, its context limit, its cache per token."""
    try:
        check_decodes(pipe.stages)
        refusal = None
    except PipelineError as e:
        refusal = str(e)
    itemsize = _itemsize(pipe)
    layers = kv_layers(pipe.stages, itemsize)
    return {"refusal": refusal, "limit": context_limit(pipe.stages),
            "bytes": None if layers is None else kv_cache_bytes(layers, sizes, fed),
            "layers": None if layers is None else [(x.width, x.itemsize, x.window)
                                                   for x in layers]}


def _itemsize(pipe) -> int:
    if pipe.policy.compute is not None:
        return torch.empty((), dtype=pipe.policy.compute).element_size()
    for m in pipe.stages.values():
        for t in m.parameters():
            if t.is_floating_point():
                return t.element_size()
    return 4


def preflight(pipe, p: Prompts, *, lanes: int, sizes: list[int], new_tokens: int,
              chunk: int | None, cache_budget: int | None) -> dict:
    """Check the call on every rank (see the module docstring); returns
    {"limit", "predicted": [bytes per rank or None]}. Collective."""
    if lanes > p.n:
        raise LanesError(f"lanes={lanes} but only {p.n} prompt(s): a lane decodes at least one "
                         f"sequence; use lanes <= {p.n}")
    fed = fed_tokens(p.L, new_tokens, chunk)  # the last token picked is never fed
    mine = _mine(pipe, p, sizes, fed)
    every = [mine]
    if pipe.ctx.world_size > 1:
        every = [None] * pipe.ctx.world_size
        with bounded("the generate check all-gather", pipe.ctx.pp_group):
            dist.all_gather_object(every, mine, group=pipe.ctx.pp_group)
    for r, x in enumerate(every):
        if x["refusal"] is not None:
            raise PipelineError(f"rank {r}: {x['refusal']}")
    limits = [x["limit"] for x in every if x["limit"] is not None]
    limit = min(limits) if limits else None
    longest = int(p.lengths.max())
    if limit is not None:
        if longest > limit:
            i = int(p.lengths.argmax())
            raise ContextError(f"prompt {i} has {longest} tokens, longer than the model's context "
                               f"of {limit} positions; shorten it to at most {limit} tokens")
        if longest + new_tokens - 1 > limit:
            raise ContextError(
                f"max_new_tokens={new_tokens} after a prompt of {longest} tokens would feed "
                f"position {longest + new_tokens - 2}, past the model's context of {limit} "
                f"positions (0..{limit - 1}); ask for at most {limit - longest + 1} new tokens")
    if cache_budget is not None:
        for r, x in enumerate(every):
            if x["bytes"] is None:
                raise PipelineError(
                    f"cache_budget={cache_budget} needs the KV cache's size, but a cached layer "
                    f"on rank {r} does not declare kv_width; leave cache_budget out")
            if x["bytes"] > cache_budget:
                most = kv_tokens_within([KVLayer(*t) for t in x["layers"]], sizes, p.L, chunk,
                                        cache_budget, most=new_tokens)
                hint = (f"ask for at most {most} new tokens" if most > 0 else
                        "use fewer or shorter prompts, a smaller prefill_chunk, or more ranks")
                raise CacheBudgetError(
                    f"max_new_tokens={new_tokens} would hold {x['bytes']} bytes of KV cache on "
                    f"rank {r} ({p.n} sequences of up to {sum(fed)} tokens), over cache_budget="
                    f"{cache_budget}; {hint}")
    return {"limit": limit, "predicted": [x["bytes"] for x in every]}
