"""Hugging Face causal LMs as a chain of pieces (``conveyor[hf]``).

``causal_lm_chain(model)`` wraps a ``*ForCausalLM`` of a known family as

    embed -> layers.0 .. layers.{L-1} -> head

sharing the model's own modules (nothing is copied), so it cuts by name with
``conveyor.runtime.execute.split`` and its tied input/output embedding is
detected and tied across ranks. Before it is used, the chain is run against
the model's own forward on a probe batch (``verify``): a chain that computes
anything else is refused, naming the family and the config fields it does
not model. Families (``families.FAMILIES``, by ``config.model_type``): GPT-2,
GPT-J, GPT-NeoX, OPT, BLOOM, Falcon, Llama, Mistral, Mixtral, Qwen2,
Qwen2-MoE, Qwen3, Gemma, Gemma 2, Gemma 3 (text), Granite, Cohere, Phi,
Phi-3. A new one is a ``Family`` of the public building blocks
(``Embed``, ``Block``, ``Head``, ``RotaryContext``, ...), see https://github.com/conveyor-pp/conveyor/blob/main/docs/models.md.

Side inputs, per stage: ``attention_mask`` (n, T) (1 token, 0 padding) is
given to every stage by the pipeline, cut from the batch each rank holds
(never sent); each block rebuilds what the model's forward would give its
layer from it (the 4-D mask per layer type, sliding or full; position ids,
``arange(T)`` or ``position_ids`` if given as a side input; rotary cos/sin;
ALiBi biases). Only the hidden state crosses a cut, plus, for an MoE model
with ``output_router_logits=True``, its router statistics (``router``).
"""

from conveyor.models.hf.blocks import (
    Block, Context, Embed, Head, RotaryContext, causal_mask, mask_of, positions,
)
from conveyor.models.hf.chain import (
    CausalLMChain, causal_lm_chain, chain_key_map, chain_state_dict, family_of,
)
from conveyor.models.hf.contexts import (
    BloomContext, FalconContext, GPT2Context, OPTContext, OPTEmbed,
)
from conveyor.models.hf.families import FAMILIES, FIELDS, Family, layer_types, register_family
from conveyor.models.hf.router import RouterLoss
from conveyor.models.hf.verify import TOLERANCE, verify_chain

__all__ = ["causal_lm_chain", "CausalLMChain", "family_of", "chain_key_map",
           "chain_state_dict", "Family", "FAMILIES", "FIELDS", "register_family", "layer_types",
           "Embed", "Block", "Head", "Context", "RotaryContext", "GPT2Context", "OPTContext",
           "OPTEmbed", "BloomContext", "FalconContext", "RouterLoss", "causal_mask", "mask_of",
           "positions", "TOLERANCE", "verify_chain"]
