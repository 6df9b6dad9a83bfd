"""The contexts and embeddings of the families whose outer forward is not
the rotary decoder's (``blocks.RotaryContext``): GPT-2, OPT (positions from
the attention mask), BLOOM and Falcon (ALiBi biases)."""

from __future__ import annotations

import math

import torch
from torch import nn

from conveyor.models.hf.blocks import Context, Embed, causal_mask, positions

__all__ = ["GPT2Context", "OPTContext", "OPTEmbed", "BloomContext", "FalconContext",
           "opt_positions"]


class GPT2Context(Context):
    """GPT-2: the causal mask (built with the position ids) and the position ids."""

    def layer_kwargs(self, index, hidden, attention_mask, position_ids, cache=None) -> dict:
        pos = positions(hidden, position_ids)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(hidden.shape[0], -1)
        return {"attention_mask": causal_mask(self.config, hidden, attention_mask, pos,
                                              cache=cache, layer_idx=index),
                "position_ids": pos}


def opt_positions(hidden, attention_mask, position_ids):
    """OPT's position ids: counted over the unpadded tokens of each row
    (cumsum of the mask, minus one), so left padding shifts them."""
    if position_ids is not None:
        return position_ids
    mask = attention_mask
    if mask is None:
        mask = torch.ones(hidden.shape[0], hidden.shape[1], device=hidden.device)
    return (torch.cumsum(mask, dim=1) * mask - 1).long()


class OPTEmbed(Embed):
    """OPT: tokens, ``project_in`` (when the embedding is narrower than the
    model), plus learned positions counted from the attention mask."""

    def __init__(self, tokens, positions, project_in=None):
        super().__init__(tokens)
        self.learned, self.project_in = positions, project_in

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        h = self.tokens(input_ids)  # (n, T, D)
        mask = attention_mask
        if mask is None:
            mask = torch.ones(h.shape[0], h.shape[1], device=h.device)
        pos = self.learned(mask, 0, position_ids=opt_positions(h, attention_mask, position_ids))
        if self.project_in is not None:
            h = self.project_in(h)  # (n, T, C)
        return h + pos.to(h.device)


class OPTContext(Context):
    """OPT: the causal mask (built without position ids, as OPT does) and
    the mask-counted position ids."""

    def layer_kwargs(self, index, hidden, attention_mask, position_ids, cache=None) -> dict:
        return {"attention_mask": causal_mask(self.config, hidden, attention_mask, cache=cache,
                                              layer_idx=index),
                "position_ids": opt_positions(hidden, attention_mask, position_ids)}


class BloomContext(Context):
    """BLOOM: the causal mask and the ALiBi biases, both from the attention
    mask (``build_alibi_tensor`` of the model's own module)."""

    def layer_kwargs(self, index, hidden, attention_mask, position_ids, cache=None) -> dict:
        from transformers.models.bloom import modeling_bloom as mb

        n, T = hidden.shape[:2]
        heads = self.config.n_head
        if attention_mask is None:
            slopes = mb._get_alibi_slopes(heads, hidden.device)
            alibi = slopes[:, None, None] * torch.arange(T, device=hidden.device)
            alibi = alibi.repeat(n, 1, 1).to(hidden.dtype)
        else:
            attention_mask = attention_mask.to(hidden.device)
            alibi = mb.build_alibi_tensor(attention_mask, heads, dtype=hidden.dtype)
        return {"alibi": alibi,
                "attention_mask": causal_mask(self.config, hidden, attention_mask, cache=cache,
                                              layer_idx=index)}


class FalconContext(Context):
    """Falcon: the causal mask (never skipped), rotary cos/sin, and with
    ``config.alibi`` the ALiBi biases folded into the mask, as FalconModel does."""

    def __init__(self, config, rotary: nn.Module):
        super().__init__(config)
        self.rotary = rotary

    def layer_kwargs(self, index, hidden, attention_mask, position_ids, cache=None) -> dict:
        from transformers.models.falcon import modeling_falcon as mf

        n, T = hidden.shape[:2]
        pos = positions(hidden, position_ids)
        mask = causal_mask(self.config, hidden, attention_mask, pos, allow_is_causal_skip=False,
                           cache=cache, layer_idx=index)
        if self.config.alibi:
            heads = self.config.num_attention_heads
            ones = (torch.ones((n, T), device=hidden.device, dtype=torch.long)
                    if attention_mask is None else attention_mask)
            alibi = mf.build_alibi_tensor(ones, heads, dtype=hidden.dtype)
            low = torch.finfo(hidden.dtype).min
            if mask.dtype == torch.bool:
                mask = torch.where(mask, torch.full((), 0.0, device=mask.device,
                                                    dtype=hidden.dtype), low)
            alibi = alibi.reshape(n, -1, *alibi.shape[1:])
            mask = torch.masked_fill(alibi / math.sqrt(self.config.hidden_size // heads),
                                     mask < -1, low)
        return {"attention_mask": mask, "position_ids": pos,
                "position_embeddings": self.rotary(hidden, pos)}
