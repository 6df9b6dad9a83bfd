"""``CausalLMChain``: a Hugging Face causal LM as embed -> layers.i -> head,
sharing the model's modules, checked against the model before use."""

from __future__ import annotations

import torch
from torch import nn

from conveyor.errors import PartitionError
from conveyor.models.hf.blocks import Block
from conveyor.models.hf.families import FAMILIES, Family
from conveyor.models.hf.verify import verify_chain

__all__ = ["CausalLMChain", "causal_lm_chain", "family_of", "chain_key_map",
           "chain_state_dict"]


def family_of(model: nn.Module) -> Family:
    """The registered family of ``model`` (by ``config.model_type``).

    Raises PartitionError naming the model type, the families known and how
    to adapt a new one."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    known = ", ".join(sorted({f.name for f in FAMILIES.values()}))
    raise PartitionError(
        f"{type(model).__name__} (model_type {kind!r}) is not a family this adapter knows "
        f"({known}); adapt it in a few lines with causal_lm_chain(model, family=Family(...)) "
        f"(https://github.com/conveyor-pp/conveyor/blob/main/docs/models.md, 'Adapting a "
        f"family'), or cut it with split_by_names")


def _on_meta(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


class CausalLMChain(nn.Module):
    """The chain view of a HF causal LM; ``forward(input_ids, attention_mask=,
    position_ids=)`` returns the logits, as the model's own ``.logits``.

    ``config``: the model's; ``family``: the Family used; ``verified``: the probe's relative difference
    (``conveyor.models.hf.verify``), None when it did not run (``verify=False``,
    or the model's parameters are on the meta device, as in ``build_stage``).
    """

    def __init__(self, model: nn.Module, *, family: Family | None = None, verify: bool = True):
        super().__init__()
        fam = family if family is not None else family_of(model)
        self.family, self.verified = fam, None
        config = model.config
        reason = fam.refuse(config) if fam.refuse is not None else None
        if reason is None and getattr(config, "output_router_logits", False) and fam.router is None:
            reason = ("output_router_logits=True asks for a router loss this family's adapter "
                      "does not wire; set it to False, or give the Family a router")
        if reason is not None:
            raise PartitionError(f"{type(model).__name__} ({fam.name}) cannot be cut as "
                                 f"configured: {reason}")
        try:
            router = (fam.router(model) if fam.router is not None
                      and getattr(config, "output_router_logits", False) else None)
            self.embed = fam.embed(model)
            context = fam.context(model)
            self.layers = nn.ModuleList(Block(layer, context, i, router=router,
                                              cache_arg=fam.cache)
                                        for i, layer in enumerate(fam.layers(model)))
            self.head = fam.head(model)
        except AttributeError as e:
            raise PartitionError(
                f"{type(model).__name__} does not have the layout of the {fam.name!r} family "
                f"({e}); causal_lm_chain wraps a *ForCausalLM model, or give family=Family(...) "
                f"that says where its pieces are") from e
        if router is not None:
            self.head.__dict__["router"] = router
        # Not submodules: the chain holds the model's pieces, not the model.
        self.__dict__["_model"] = model
        self.__dict__["config"] = config
        if verify and not _on_meta(model):
            self.verified = verify_chain(self, model, fam, router=router is not None)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        side = {"attention_mask": attention_mask, "position_ids": position_ids}
        h = self.embed(input_ids, **side)
        out = (h,)
        for block in self.layers:
            y = block(*out, **side)
            out = y if isinstance(y, tuple) else (y,)
        return self.head(*out, **side)

    def export_names(self) -> dict[str, list[str]]:
        """{chain state-dict key: the HF model's state-dict keys of that
        tensor} (a tied matrix has two), for ``Pipeline.export_state_dict``."""
        return _state_key_map(self, self._model)


def _state_key_map(chain: nn.Module, model: nn.Module) -> dict[str, list[str]]:
    hf: dict[int, list[str]] = {}
    for k, t in model.state_dict(keep_vars=True).items():
        hf.setdefault(id(t), []).append(k)
    return {k: hf[id(t)] for k, t in chain.state_dict(keep_vars=True).items() if id(t) in hf}


def causal_lm_chain(model: nn.Module, *, family: Family | None = None,
                    verify: bool = True) -> CausalLMChain:
    """Wrap a HF causal LM as embed -> layers.i -> head (see the package
    docstring). ``family``: adapt a model type the adapter does not know;
    ``verify=False``: skip the check against the model's forward (then a
    config field the adaptation does not model trains silently wrong).

    Raises PartitionError for an unknown model type, a configuration the
    family refuses, a model without the family's layout, or a chain that
    does not compute what the model computes."""
    return CausalLMChain(model, family=family, verify=verify)


def chain_key_map(model: nn.Module) -> dict[str, str]:
    """{chain parameter name: HF state-dict key}, to load a HF checkpoint (full
    or sharded) into stages built with ``build_stage``. Build ``model`` on the
    meta device: only the names are read. A tied weight's chain names all map
    to one HF key, so a checkpoint that stores it once still fills every stage."""
    hf: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        hf.setdefault(id(p), n)
    chain = causal_lm_chain(model, verify=False)
    return {n: hf[id(p)] for n, p in chain.named_parameters(remove_duplicate=False)}


def chain_state_dict(shard, key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """The entries of a HF state dict (or one shard of it) under chain keys."""
    return {ck: shard[hk] for ck, hk in key_map.items() if hk in shard}
