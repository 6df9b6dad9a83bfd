"""Tiny random-init configs (built in code, never downloaded) of every
Hugging Face family the adapter supports, in float64, and a padded batch
whose padding never fills a sliding window (the library's eager attention
turns a query row with no key in its window into NaN, in the unsplit model
too)."""

from __future__ import annotations

import torch

V, T, WINDOW = 13, 12, 5  # the window slides inside the sequence: it changes real tokens
_COMMON = dict(vocab_size=V, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
               bos_token_id=0, eos_token_id=0, pad_token_id=0)
_MOE = dict(output_router_logits=True, router_aux_loss_coef=0.1, experts_implementation="eager",
            num_experts_per_tok=2)

# family -> (config class, model class, fields beyond _COMMON)
SPECS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2,
                   tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=4)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=4)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=4, sliding_window=WINDOW, final_logit_softcapping=0.5,
                    attn_logit_softcapping=2.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=4, sliding_window=WINDOW, final_logit_softcapping=0.5,
                    layer_types=["sliding_attention", "full_attention"] * 2,
                    rope_parameters={"sliding_attention": {"rope_type": "default",
                                                           "rope_theta": 10.0},
                                     "full_attention": {"rope_type": "default",
                                                        "rope_theta": 1000.0}})),
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                dict(embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22,
                     attention_multiplier=0.1)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.0625)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict()),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, **_MOE)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=4, moe_intermediate_size=8, shared_expert_intermediate_size=8,
                       mlp_only_layers=[1], **_MOE)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict()),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_embd=8, n_layer=4, n_head=2, n_positions=32, rotary_dim=4)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict()),
    "falcon_alibi": ("FalconConfig", "FalconForCausalLM", dict(alibi=True)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(n_embed=8, n_layer=4, n_head=2)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(ffn_dim=16, word_embed_proj_dim=6, do_layer_norm_before=False, dropout=0.0)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=8, n_layer=4, n_head=2, n_positions=32, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0)),
}
FAMILIES = list(SPECS)
ROUTED = ("mixtral", "qwen2_moe")


def config(family: str, **over):
    import transformers as tf

    cfg_cls, _, extra = SPECS[family]
    return getattr(tf, cfg_cls)(**{**_COMMON, **extra, **over})


def hf_model(family: str, **over):
    """The family's HF model (float64), deterministic given the torch seed."""
    import transformers as tf

    return getattr(tf, SPECS[family][1])(config(family, **over)).double()


def split_points(S: int) -> list[str]:
    """4 layers: S=2 -> [embed, l0, l1] [l2, l3, head]; S=4 -> one layer each."""
    return ["layers.2"] if S == 2 else ["layers.1", "layers.2", "layers.3"]


def batch(n: int, *, seed: int):
    """ids (n, T), right-padded mask (at most WINDOW - 1 pads), next-token
    targets (-100 on padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=g)
    lengths = torch.randint(T - WINDOW + 1, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    targets = torch.randint(1, V, (n, T), generator=g)
    targets[mask == 0] = -100
    return ids, mask, targets
