"""Decoder-only Hugging Face causal LMs as a chain of pieces (``conveyor[hf]``).

``causal_lm_chain(model)`` wraps a ``*ForCausalLM`` whose blocks sit in one
``ModuleList`` (GPT-2, Llama and the families built like them: Mistral, Qwen2,
...) as

    embed -> layers.0 .. layers.{L-1} -> head

sharing the model's own modules (nothing is copied), so it cuts by name with
``conveyor.runtime.execute.split`` and its tied input/output embedding is detected
and tied across ranks.

Side inputs, per stage: ``attention_mask`` (n, T) (1 token, 0 padding) is
given to every stage by the pipeline, cut from the batch each rank holds
(never sent); each block rebuilds the 4-D causal mask from it with the
library's own ``create_causal_mask``, and the position ids (``arange(T)``,
or ``position_ids`` if given as a side input) and Llama's rotary cos/sin are
recomputed on each rank. Only the hidden state crosses a cut.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from conveyor.errors import PartitionError

__all__ = ["causal_lm_chain", "CausalLMChain", "family_of", "chain_key_map",
           "chain_state_dict"]


def family_of(model: nn.Module) -> str:
    """"gpt2" (transformer.wte/wpe/h/ln_f) or "llama" (model.embed_tokens/
    layers/norm/rotary_emb). Raises PartitionError for anything else."""
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        return "gpt2"
    inner = getattr(model, "model", None)
    if inner is not None and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return "llama"
    raise PartitionError(
        f"{type(model).__name__} is not a decoder-only causal LM this adapter knows (GPT-2 "
        f"style transformer.h, or Llama style model.layers); cut it with split_by_names or "
        f"build the stages yourself")


def _positions(hidden: torch.Tensor, position_ids) -> torch.Tensor:
    if position_ids is not None:
        return position_ids
    return torch.arange(hidden.shape[1], device=hidden.device)[None]  # (1, T)


def _cache_arg(fn) -> str:
    """The KV-cache keyword of the mask builder: ``cache`` in transformers 5,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


class Embed(nn.Module):
    def __init__(self, model: nn.Module, family: str):
        super().__init__()
        self.family = family
        if family == "gpt2":
            self.wte, self.wpe, self.drop = (model.transformer.wte, model.transformer.wpe,
                                             model.transformer.drop)
        else:
            self.embed_tokens = model.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if self.family == "llama":
            return self.embed_tokens(input_ids)  # (n, T, C)
        h = self.wte(input_ids)
        return self.drop(h + self.wpe(_positions(h, position_ids)))  # (n, T, C)


class Block(nn.Module):
    """One decoder layer with the mask (and rotary embedding) it needs,
    rebuilt from the side inputs on the rank that runs it."""

    def __init__(self, layer: nn.Module, config, rotary_cls=None):
        super().__init__()
        self.layer = layer
        # Not submodules: the config is shared, and the rotary table is a
        # non-persistent buffer that a meta-device build would leave empty.
        self.__dict__["config"] = config
        self.__dict__["rotary_cls"] = rotary_cls
        self.__dict__["rotary"] = {}

    def forward(self, hidden, attention_mask=None, position_ids=None):
        from transformers.masking_utils import create_causal_mask

        pos = _positions(hidden, position_ids)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden,
                                  attention_mask=attention_mask, position_ids=pos,
                                  **{_cache_arg(create_causal_mask): None})
        kw = {}
        if self.rotary_cls is not None:
            key = (hidden.device, hidden.dtype)
            if key not in self.rotary:
                self.rotary[key] = self.rotary_cls(config=self.config).to(hidden.device)
            kw["position_embeddings"] = self.rotary[key](hidden, position_ids=pos)
        out = self.layer(hidden, attention_mask=mask, position_ids=pos, **kw)
        return out[0] if isinstance(out, tuple) else out


class Head(nn.Module):
    def __init__(self, model: nn.Module, family: str):
        super().__init__()
        self.norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
        self.lm_head = model.lm_head

    def forward(self, hidden, attention_mask=None, position_ids=None):
        return self.lm_head(self.norm(hidden))  # (n, T, V)


class CausalLMChain(nn.Module):
    """The chain view of a HF causal LM; ``forward(input_ids, attention_mask=,
    position_ids=)`` returns the logits, as the model's own ``.logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        family = family_of(model)
        self.family = family
        config = model.config
        if family == "gpt2":
            layers, rotary = model.transformer.h, None
        else:
            layers, rotary = model.model.layers, type(model.model.rotary_emb)
        self.embed = Embed(model, family)
        self.layers = nn.ModuleList(Block(layer, config, rotary) for layer in layers)
        self.head = Head(model, family)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        side = {"attention_mask": attention_mask, "position_ids": position_ids}
        h = self.embed(input_ids, **side)
        for block in self.layers:
            h = block(h, **side)
        return self.head(h, **side)


def causal_lm_chain(model: nn.Module) -> CausalLMChain:
    """Wrap a decoder-only HF causal LM as embed -> layers.i -> head.

    Raises PartitionError for a model of an unknown layout."""
    return CausalLMChain(model)


def chain_key_map(model: nn.Module) -> dict[str, str]:
    """{chain state-dict key: HF state-dict key}, to load a HF checkpoint (full
    or sharded) into stages built with ``build_stage``. Build ``model`` on the
    meta device: only the names are read. A tied weight's chain names all map
    to one HF key, so a checkpoint that stores it once still fills every stage."""
    hf: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        hf.setdefault(id(p), n)
    return {n: hf[id(p)]
            for n, p in causal_lm_chain(model).named_parameters(remove_duplicate=False)}


def chain_state_dict(shard, key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """The entries of a HF state dict (or one shard of it) under chain keys."""
    return {ck: shard[hk] for ck, hk in key_map.items() if hk in shard}
