"""A Hugging Face Llama-style model pipelined over 2 processes in bf16 (docs/precision.md).

The model stays float32 (the master weights); every stage's forward runs
under bfloat16 autocast, the loss is computed from float32 logits, and what
crosses the cut between the ranks is bfloat16: half of float32's bytes.

    .venv/bin/python examples/train_hf_bf16.py
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conveyor.models.hf import causal_lm_chain
from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.runtime.execute.split import split_by_names
from conveyor.runtime.train.losses import TokenCrossEntropy


def main(ctx, precision="bf16", steps=20):
    torch.manual_seed(0)
    lm = causal_lm_chain(LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)))
    pipe = Pipeline.from_stages(
        split_by_names(lm, split_points=["layers.2"]), loss_fn=TokenCrossEntropy(),
        optimizer=lambda ps: torch.optim.AdamW(ps, lr=3e-3), schedule="1f1b", microbatches=4,
        config=PipelineConfig(precision=precision, max_grad_norm=1.0), ctx=ctx)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 128, (16, 32), generator=g)
        ids[:, 1::2] = ids[:, ::2]  # learnable: every other token repeats the one before
        mask = (torch.arange(32)[None] < torch.randint(8, 33, (16, 1), generator=g)).long()
        labels = torch.where(mask.bool(), ids.roll(-1, 1), -100)
        labels[:, -1] = -100
        res = pipe.step(ids, labels, side={"attention_mask": mask})
        losses.append(res.loss)
    return {"losses": losses, "sent_bytes": res.stats["sent_bytes"],
            "skipped": pipe.skipped_steps}


if __name__ == "__main__":
    for precision in ("fp32", "bf16"):
        got = launch(main, nprocs=2, args=(precision,))[0]
        loss = got["losses"]
        print(f"{precision}: token-mean loss {loss[0]:.3f} -> {loss[-1]:.3f} over {len(loss)} "
              f"steps; rank 0 sent {got['sent_bytes']:,} bytes in the last step; "
              f"{got['skipped']} skipped")
