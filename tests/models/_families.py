"""The model families the tests pipeline: the project's GPT and, when
transformers is installed, tiny random-init GPT-2 and Llama configs (built in
code, never downloaded). Every family is a chain embed -> blocks -> head."""

from __future__ import annotations

import torch

from conveyor.models import GPT, GPTConfig

V, T = 13, 8


def have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def factory(family: str):
    """A function building the whole model (as a chain) in float64; deterministic
    given the torch seed."""
    if family == "gpt":
        return lambda: GPT(GPTConfig(vocab=V, context=T, layers=4, heads=2, width=8)).double()
    from conveyor.models.hf import causal_lm_chain
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=8, n_layer=4, n_head=2,
                         bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0)
        return lambda: causal_lm_chain(GPT2LMHeadModel(cfg).double())
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=T,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return lambda: causal_lm_chain(LlamaForCausalLM(cfg).double())


def block_prefix(family: str) -> str:
    return "blocks" if family == "gpt" else "layers"


def split_points(family: str, P: int) -> list[str]:
    """4 blocks: P=2 -> [embed, b0, b1] [b2, b3, head]; P=4 -> one block each
    (embed with the first, head with the last)."""
    b = block_prefix(family)
    return [f"{b}.2"] if P == 2 else [f"{b}.1", f"{b}.2", f"{b}.3"]


def lm_batch(n: int, *, seed: int, t: int = T):
    """ids (n, t), attention mask (n, t) with right padding of random length,
    and next-token targets (-100 on padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    targets = torch.randint(1, V, (n, t), generator=g)
    targets[mask == 0] = -100
    return ids, mask, targets
