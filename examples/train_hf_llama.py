"""Pipeline a Hugging Face Llama-style model over 2 processes (docs/models.md).

A tiny random-init config built in code (no download); tied embeddings;
padded batches with a token-mean loss; the attention mask as a side input.

    .venv/bin/python examples/train_hf_llama.py
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conveyor.models.hf import causal_lm_chain
from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.runtime.execute.split import split_by_names


def main(ctx):
    torch.manual_seed(0)
    lm = causal_lm_chain(LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)))
    pipe = Pipeline.from_stages(
        split_by_names(lm, split_points=["layers.2"]), loss_fn=TokenCrossEntropy(),
        optimizer=lambda ps: torch.optim.AdamW(ps, lr=3e-3), schedule="1f1b", microbatches=4,
        config=PipelineConfig(loss_reduction="sum", max_grad_norm=1.0), ctx=ctx)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(20):
        ids = torch.randint(0, 128, (16, 32), generator=g)
        ids[:, 1::2] = ids[:, ::2]  # learnable: every other token repeats the one before
        mask = (torch.arange(32)[None] < torch.randint(8, 33, (16, 1), generator=g)).long()
        labels = torch.where(mask.bool(), ids.roll(-1, 1), -100)
        labels[:, -1] = -100
        losses.append(pipe.step(ids, labels, side={"attention_mask": mask}).loss)
    return losses


if __name__ == "__main__":
    losses = launch(main, nprocs=2)[0]
    print(f"token-mean loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
