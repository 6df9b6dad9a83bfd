"""The public building blocks of a chain: ``Embed``, ``Block``, ``Head`` and
the contexts that give each layer what the model's own forward would.

A Hugging Face causal LM's forward does three things around its layers:
embeds the tokens (maybe scaled, plus learned positions, a norm, dropout),
computes once what every layer takes besides the hidden state (the 4-D
attention mask, per layer type when some layers slide; position ids; rotary
cos/sin, per layer type in Gemma 3; ALiBi biases), and turns the last hidden
state into logits (a norm, the head, maybe scaled or soft-capped). A chain
does the same in pieces: ``Embed`` on the first stage, ``Block`` per layer
(its ``Context`` rebuilds the layer's keyword arguments from the side inputs
on the rank that runs it, so only the hidden state crosses a cut) and
``Head`` on the last stage. ``conveyor.models.hf.families`` assembles them per
family; a new family is a few lines of the same (https://github.com/conveyor-pp/conveyor/blob/main/docs/models.md).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from conveyor.models.hf.router import RouterLoss

__all__ = ["Embed", "Block", "Head", "Context", "RotaryContext", "positions",
           "causal_mask", "mask_of"]

FULL, SLIDING = "full_attention", "sliding_attention"


def positions(hidden: torch.Tensor, position_ids=None) -> torch.Tensor:
    """The position ids a HF model uses when given none: arange(T), (1, T)."""
    if position_ids is not None:
        return position_ids
    return torch.arange(hidden.shape[1], device=hidden.device)[None]


def mask_of(kind: str, config, hidden, attention_mask, position_ids=..., *, cache=None,
            layer_idx: int | None = None, **extra):
    """The 4-D mask the library's own builder makes for a layer of type
    ``kind`` ("full_attention" or "sliding_attention", the window read from
    ``config.sliding_window``), for a forward without a KV cache, or with
    ``cache`` (the model's cache class, sized by its layer ``layer_idx``).
    ``position_ids=...`` leaves them out of the call, as some models do."""
    from transformers import masking_utils as mu

    fn = mu.create_sliding_window_causal_mask if kind == SLIDING else mu.create_causal_mask
    kw = dict(config=config, inputs_embeds=hidden, attention_mask=attention_mask, **extra)
    kw[_cache_arg(fn)] = cache
    if cache is not None:
        kw["layer_idx"] = layer_idx
    if position_ids is not ...:
        kw["position_ids"] = position_ids
    return fn(**kw)


def causal_mask(config, hidden, attention_mask, position_ids=..., **extra):
    """``mask_of("full_attention", ...)``."""
    return mask_of(FULL, config, hidden, attention_mask, position_ids, **extra)


def _cache_arg(fn) -> str:
    """The KV-cache keyword of the mask builder: ``cache`` in transformers 5.2x,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


class Context(nn.Module):
    """What the model's own forward hands every layer besides the hidden
    state. ``layer_kwargs(index, hidden, attention_mask, position_ids)`` ->
    the keyword arguments of layer ``index``; when decoding, also
    ``cache=`` (the model's cache class, before the layer adds this
    forward's keys), which the masks are sized by. A module, so that what it
    holds (a rotary embedding's tables) moves with the stage and is counted
    among its buffers; shared by all blocks of a chain."""

    def __init__(self, config):
        super().__init__()
        self.__dict__["config"] = config  # shared, not a submodule

    def layer_kwargs(self, index: int, hidden, attention_mask, position_ids) -> dict:
        raise NotImplementedError


class RotaryContext(Context):
    """The context of most decoders of transformers 5 (Llama, Mistral,
    Gemma 1-3, Qwen, Granite, Cohere, Phi-3, GPT-NeoX, GPT-J, ...):

    - the mask per layer type: ``layer_types`` (one "full_attention" or
      "sliding_attention" per layer; None: all full) picks the library's
      causal or sliding-window builder, as the model's own mask mapping does;
    - ``position_ids`` (arange(T) or the side input);
    - ``rotary``: the model's rotary module, called ``rotary(hidden, pos)``,
      or ``rotary(hidden, pos, layer_type)`` with ``per_type=True``
      (Gemma 3's local and global bases); None: no position embeddings;
    - ``mask_kw``: extra arguments of the mask builder
      (e.g. ``allow_is_causal_skip=False``).
    """

    def __init__(self, config, rotary: nn.Module | None = None, *, layer_types=None,
                 per_type: bool = False, mask_kw: dict | None = None):
        super().__init__(config)
        self.rotary = rotary
        self.layer_types = list(layer_types) if layer_types is not None else None
        self.per_type = per_type
        self.mask_kw = dict(mask_kw or {})

    def kind(self, index: int) -> str:
        return self.layer_types[index] if self.layer_types is not None else FULL

    def layer_kwargs(self, index, hidden, attention_mask, position_ids, cache=None) -> dict:
        pos = positions(hidden, position_ids)
        kind = self.kind(index)
        kw = {"attention_mask": mask_of(kind, self.config, hidden, attention_mask, pos,
                                        cache=cache, layer_idx=index, **self.mask_kw),
              "position_ids": pos}
        if self.rotary is not None:
            kw["position_embeddings"] = (self.rotary(hidden, pos, kind) if self.per_type
                                         else self.rotary(hidden, pos))
        return kw


class Embed(nn.Module):
    """Token ids -> the first hidden state:
    ``dropout(norm(tokens(ids) * scale + positions(pos)))``, each part
    optional and in the model's order. ``positions`` is a learned position
    embedding called with the position ids (arange(T) or the side input)."""

    decodes = "local"  # each position from its token and position id

    def __init__(self, tokens: nn.Module, *, scale: float | None = None,
                 positions: nn.Module | None = None, norm: nn.Module | None = None,
                 dropout: nn.Module | None = None):
        super().__init__()
        self.tokens, self.positions, self.norm, self.dropout = tokens, positions, norm, dropout
        self.scale = scale

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        h = self.tokens(input_ids)  # (n, T, C)
        if self.scale is not None:
            h = h * self.scale
        if self.positions is not None:
            h = h + self.positions(positions(h, position_ids)).to(h.device)
        if self.norm is not None:
            h = self.norm(h)
        if self.dropout is not None:
            h = self.dropout(h)
        return h


class Block(nn.Module):
    """Decoder layer ``index``, called as ``layer(hidden, **kwargs)`` with the
    keyword arguments ``context`` rebuilds from the side inputs; a tuple
    output gives its first element. ``router``: an MoE layer's load-balancing
    statistics, carried to the head (``conveyor.models.hf.router``).

    Decoding: with ``cache_arg`` (the keyword the layer takes the model's
    cache class under, from ``Family.cache``) and a ``cache=`` side input
    (one lane's ``StageCache``), the layer keeps its keys and values in the
    lane's ``DynamicCache``, one per stage and lane, shared by the stage's
    blocks; the router's statistics are not gathered then (no loss)."""

    def __init__(self, layer: nn.Module, context: Context, index: int, *,
                 router: RouterLoss | None = None, cache_arg: str | None = None):
        super().__init__()
        self.layer, self.context, self.index = layer, context, index
        self.__dict__["router"] = router  # config only, no state
        self._taps = router.tap(layer) if router is not None else None
        self.cache_arg = cache_arg

    @property
    def decodes(self) -> str | None:
        """"cache" when the family declares its cache path, else None."""
        return "cache" if self.cache_arg is not None else None

    @property
    def kv_width(self) -> int:
        """Elements the layer caches per token and sequence (its keys and
        values), measured once: one token through the layer with a cache of
        its own (configs name their head counts differently)."""
        width = self.__dict__.get("_kv_width")
        if width is None:
            width = self.__dict__["_kv_width"] = self._probe_width()
        return width

    def _probe_width(self) -> int:
        p = next(self.layer.parameters())
        x = torch.zeros(1, 1, self.context.config.hidden_size, dtype=p.dtype, device=p.device)
        one = torch.ones(1, 1, dtype=torch.long, device=p.device)
        probe = _Slots()
        with torch.no_grad():
            self._cached(x, probe, one, one - 1)
        layer = probe.made.layers[self.index]
        return layer.keys.numel() + layer.values.numel()

    @property
    def kv_window(self) -> int | None:
        """Tokens a sliding layer's cache holds at most (the model's cache
        keeps the last window - 1 as a view of a forward's window - 1 + T;
        after a one-token step, ``sliding_window``); None: all."""
        from transformers.cache_utils import get_layer_types_and_kwargs

        _, kwargs = get_layer_types_and_kwargs(self.context.config)
        return kwargs[self.index].get("sliding_window")

    @property
    def max_positions(self) -> int | None:
        """The model's context (``max_position_embeddings``)."""
        return getattr(self.context.config, "max_position_embeddings", None)

    @property
    def decode_refusal(self) -> str:
        return ("is a layer of a family without a KV-cache path (Family(cache=...) names "
                "the keyword its layers take the model's cache under)")

    def forward(self, hidden, *carry, attention_mask=None, position_ids=None, cache=None):
        if cache is not None:
            return self._cached(hidden, cache, attention_mask, position_ids)
        kw = self.context.layer_kwargs(self.index, hidden, attention_mask, position_ids)
        if self.router is None:
            out = self.layer(hidden, **kw)
            return out[0] if isinstance(out, tuple) else out
        with self._taps as logits:
            out = self.layer(hidden, **kw)
        h = out[0] if isinstance(out, tuple) else out
        return (h, *self.router.add(carry, logits, attention_mask, hidden))

    def _cached(self, hidden, cache, attention_mask, position_ids):
        if self.cache_arg is None:
            raise TypeError(f"{self.decode_refusal} (layer {self.index})")
        from transformers import DynamicCache

        config = self.context.config
        kv = cache.slot("hf", lambda: DynamicCache(config=config))
        kw = self.context.layer_kwargs(self.index, hidden, attention_mask, position_ids,
                                       cache=kv)
        out = self.layer(hidden, **kw, **{self.cache_arg: kv}, use_cache=True)
        return out[0] if isinstance(out, tuple) else out


class _Slots:
    """A one-slot stand-in for the runtime's StageCache (``kv_width``'s probe)."""

    made = None

    def slot(self, key, make):
        if self.made is None:
            self.made = make()
        return self.made


class Head(nn.Module):
    """The last hidden state -> logits:
    ``softcap(lm_head(project(norm(h))) * scale / divide)``, each part
    optional; ``softcap`` c gives ``tanh(logits / c) * c``. With an MoE
    router's statistics carried in (``*carry``), adds the model's router loss
    (``router.finish``) as an auxiliary loss."""

    decodes = "local"

    def __init__(self, norm: nn.Module | None, lm_head: nn.Module, *,
                 project: nn.Module | None = None, scale: float | None = None,
                 divide: float | None = None, softcap: float | None = None,
                 router: RouterLoss | None = None):
        super().__init__()
        self.norm, self.project, self.lm_head = norm, project, lm_head
        self.scale, self.divide, self.softcap = scale, divide, softcap
        self.__dict__["router"] = router

    def forward(self, hidden, *carry, attention_mask=None, position_ids=None):
        h = self.norm(hidden) if self.norm is not None else hidden
        if self.project is not None:
            h = self.project(h)
        logits = self.lm_head(h)  # (n, T, V)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if carry and self.router is not None:
            self.router.finish(carry, logits.dtype)
        return logits
