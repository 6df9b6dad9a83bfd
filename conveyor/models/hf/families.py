"""The families the adapter knows, keyed by ``config.model_type``, and how to
add one (``register_family``).

A ``Family`` says where a model keeps its embedding, layers and head, which
``Context`` gives its layers their keyword arguments, and which config fields
it models beyond what the layers do themselves. ``refuse(config)`` names a
configuration it cannot represent. Everything it builds is checked against
the model's own forward before use (``conveyor.models.hf.verify``), so a
family that misses something is refused, naming the fields it does not model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from conveyor.models.hf.blocks import SLIDING, Embed, Head, RotaryContext
from conveyor.models.hf.contexts import (
    BloomContext, FalconContext, GPT2Context, OPTContext, OPTEmbed,
)
from conveyor.models.hf.router import RouterLoss

__all__ = ["Family", "FAMILIES", "register_family", "FIELDS", "fields_set", "layer_types"]

# Config fields that change a model's forward and that an adapter can miss
# (named in a refusal when set and not modelled by the family).
FIELDS = ("sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
          "logits_scaling", "embedding_multiplier", "residual_multiplier", "attention_multiplier",
          "logit_scale", "alibi", "use_bidirectional_attention", "layerdrop",
          "output_router_logits")


def _is_set(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        return SLIDING in value
    return value is not None and value != 0 and value != 1


def fields_set(config) -> dict:
    """The FIELDS this config sets to something other than a neutral value."""
    return {f: getattr(config, f) for f in FIELDS if _is_set(getattr(config, f, None))}


@dataclass(frozen=True)
class Family:
    """How to cut one family into embed -> layers -> head.

    name:    the family's name (the config's ``model_type``).
    embed:   model -> the first piece (an ``Embed``, or any module taking
             ``(input_ids, attention_mask=, position_ids=)``).
    layers:  model -> its decoder layers, in order.
    context: model -> the ``Context`` shared by its blocks.
    head:    model -> the last piece (a ``Head``).
    models:  config fields (of FIELDS) this family represents, in its pieces
             or inside its layers; the others, when set, are named if the
             check against the model's forward fails.
    refuse:  config -> None, or why this configuration cannot be adapted.
    router:  model -> its MoE router loss (``RouterLoss``), for families
             whose ``output_router_logits`` is wired; None: not wired.
    cache:   the keyword the family's layers take the model's KV cache
             class under ("cache" in transformers 5, "layer_past" in some),
             which lets ``Pipeline.generate`` decode it with a cache per
             lane; None: no cache path, and generate refuses the family by
             name. Declared only where a test holds the pipeline's greedy
             tokens equal to the model's own ``generate``.
    """

    name: str
    embed: Callable[[nn.Module], nn.Module]
    layers: Callable[[nn.Module], Sequence[nn.Module]]
    context: Callable[[nn.Module], nn.Module]
    head: Callable[[nn.Module], nn.Module]
    models: tuple[str, ...] = ()
    refuse: Callable | None = None
    router: Callable | None = None
    cache: str | None = None


FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, model_types: Sequence[str] = ()) -> Family:
    """Make ``family`` the adapter of ``family.name`` and of ``model_types``."""
    for key in (family.name, *model_types):
        FAMILIES[key] = family
    return family


def layer_types(config) -> list[str] | None:
    """Per layer, "full_attention" or "sliding_attention", as the model's
    own mask mapping picks: ``config.layer_types`` when the config has them,
    else every layer sliding when ``sliding_window`` is set (Mistral,
    Mixtral, Phi-3), else None (all full)."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return list(types)
    if getattr(config, "sliding_window", None) is not None:
        return [SLIDING] * config.num_hidden_layers
    return None


# -- the rotary decoders: model.{embed_tokens, layers, norm, rotary_emb}, lm_head ----------

def _decoder(name, *, embed_scale=None, logit_scale=None, logit_divide=None, softcap=None,
             sliding=False, per_type=False, norm="norm", dropout=None, models=(), refuse=None,
             router=None, cache="cache"):
    """Register a rotary decoder; the keyword arguments name config fields
    (``embed_scale``: multiplies the embeddings; ``logit_scale`` /
    ``logit_divide``: multiply / divide the logits; ``softcap``: caps them)
    or the model's attributes (``norm``, ``dropout``); ``sliding``: its
    mask follows ``layer_types``."""
    def cfg(m, attr):
        return getattr(m.config, attr) if attr else None

    return register_family(Family(
        name,
        embed=lambda m: Embed(m.model.embed_tokens, scale=cfg(m, embed_scale),
                              dropout=getattr(m.model, dropout) if dropout else None),
        layers=lambda m: m.model.layers,
        context=lambda m: RotaryContext(m.config, m.model.rotary_emb, per_type=per_type,
                                        layer_types=layer_types(m.config) if sliding else None),
        head=lambda m: Head(getattr(m.model, norm), m.lm_head, scale=cfg(m, logit_scale),
                            divide=cfg(m, logit_divide), softcap=cfg(m, softcap)),
        models=(("sliding_window", "layer_types") if sliding else ()) + tuple(models),
        refuse=refuse, router=router, cache=cache))


def _moe(experts_field: str, router_cls: str):
    def build(model):
        cfg = model.config
        return RouterLoss(lambda mod: type(mod).__name__ == router_cls,
                          num_experts=getattr(cfg, experts_field), top_k=cfg.num_experts_per_tok,
                          coef=cfg.router_aux_loss_coef)
    return build


def _bidirectional(config):
    if getattr(config, "use_bidirectional_attention", False):
        return ("use_bidirectional_attention=True (an encoder-style mask, for embedding "
                "models) is not a causal LM; set it to False to train the causal model")
    return None


_GEMMA = ("final_logit_softcapping", "attn_logit_softcapping")
_decoder("llama")
_decoder("gemma")  # its embedding module scales by itself
for _name in ("mistral", "qwen2", "qwen3", "phi3"):
    _decoder(_name, sliding=True)
_decoder("gemma2", softcap="final_logit_softcapping", sliding=True, models=_GEMMA)
_decoder("gemma3_text", softcap="final_logit_softcapping", sliding=True, per_type=True,
         models=_GEMMA, refuse=_bidirectional)
_decoder("granite", embed_scale="embedding_multiplier", logit_divide="logits_scaling",
         models=("embedding_multiplier", "logits_scaling", "residual_multiplier",
                 "attention_multiplier"))
_decoder("cohere", logit_scale="logit_scale", models=("logit_scale",))
_decoder("mixtral", sliding=True, models=("output_router_logits",),
         router=_moe("num_local_experts", "MixtralTopKRouter"))
_decoder("qwen2_moe", sliding=True, models=("output_router_logits",),
         router=_moe("num_experts", "Qwen2MoeTopKRouter"))
_decoder("phi", norm="final_layernorm", dropout="embed_dropout")

# -- the others ------------------------------------------------------------------------------

register_family(Family(
    "gpt2",
    embed=lambda m: Embed(m.transformer.wte, positions=m.transformer.wpe,
                          dropout=m.transformer.drop),
    layers=lambda m: m.transformer.h, context=lambda m: GPT2Context(m.config),
    head=lambda m: Head(m.transformer.ln_f, m.lm_head), cache="cache"))

register_family(Family(
    "gpt_neox",
    embed=lambda m: Embed(m.gpt_neox.embed_in, dropout=m.gpt_neox.emb_dropout),
    layers=lambda m: m.gpt_neox.layers,
    context=lambda m: RotaryContext(m.config, m.gpt_neox.rotary_emb),
    head=lambda m: Head(m.gpt_neox.final_layer_norm,
                        m.lm_head if hasattr(m, "lm_head") else m.embed_out),
    cache="layer_past"))

register_family(Family(
    "gptj",
    embed=lambda m: Embed(m.transformer.wte, dropout=m.transformer.drop),
    layers=lambda m: m.transformer.h,
    context=lambda m: RotaryContext(m.config, m.transformer.rotary_emb),
    head=lambda m: Head(m.transformer.ln_f, m.lm_head), cache="cache"))

register_family(Family(
    "falcon",
    embed=lambda m: Embed(m.transformer.word_embeddings),
    layers=lambda m: m.transformer.h,
    context=lambda m: FalconContext(m.config, m.transformer.rotary_emb),
    head=lambda m: Head(m.transformer.ln_f, m.lm_head), models=("alibi",),
    cache="layer_past"))

register_family(Family(
    "bloom",
    embed=lambda m: Embed(m.transformer.word_embeddings,
                          norm=m.transformer.word_embeddings_layernorm),
    layers=lambda m: m.transformer.h, context=lambda m: BloomContext(m.config),
    head=lambda m: Head(m.transformer.ln_f, m.lm_head), models=("alibi",),
    cache="layer_past"))


def _opt_refuse(config):
    if config.layerdrop:
        return (f"layerdrop={config.layerdrop} skips layers at random while training, in an "
                f"order no pipeline can reproduce; set config.layerdrop = 0")
    return None


register_family(Family(
    "opt",
    embed=lambda m: OPTEmbed(m.model.decoder.embed_tokens, m.model.decoder.embed_positions,
                             m.model.decoder.project_in),
    layers=lambda m: m.model.decoder.layers, context=lambda m: OPTContext(m.config),
    head=lambda m: Head(m.model.decoder.final_layer_norm, m.lm_head,
                        project=m.model.decoder.project_out),
    refuse=_opt_refuse, cache="cache"))
