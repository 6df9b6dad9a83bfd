"""A small decoder-only transformer (GPT), written as a chain of pieces.

    embed -> blocks.0 .. blocks.{L-1} -> head

so that it cuts by name (``conveyor.runtime.execute.split``). The head's output matrix
is the embedding's (tied, the same Parameter), which the pipeline ties across
ranks. Side input: ``attention_mask`` (n, T), 1 for tokens, 0 for padding,
given to every block as a keyword; positions are recomputed from T in the
embedding (nothing but the hidden state crosses a cut), or taken from the
side input ``position_ids`` (n, T) when given.

Decoding (``Pipeline.generate``): each block keeps its keys and values per
lane in the ``cache=`` side input (``LayerCache``), so a step feeds only the
new tokens; ``attention_mask`` then covers the cached tokens and the new
ones, (n, past + T). The embedding and head compute each position alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GPTConfig", "GPT", "Embed", "Block", "Head", "LayerCache", "causal_mask",
           "generation_positions"]


@dataclass(frozen=True)
class GPTConfig:
    """vocab: tokens (256 for bytes); context: longest sequence; layers: blocks;
    heads: attention heads; width: model width (a multiple of heads);
    tie: output head shares the embedding matrix; dropout: on attention and MLP."""

    vocab: int = 256
    context: int = 64
    layers: int = 4
    heads: int = 4
    width: int = 64
    tie: bool = True
    dropout: float = 0.0


def causal_mask(T: int, attention_mask: torch.Tensor | None, device, past: int = 0
                ) -> torch.Tensor:
    """Boolean (n or 1, 1, T, past + T): True where query t (at position
    past + t) may attend to key u (u <= past + t, and u is not padding);
    ``attention_mask`` (n, past + T)."""
    allowed = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, (n, T): the count of real tokens
    before each one (padding gets 0), so a prompt's positions do not depend
    on how much padding precedes it (as Hugging Face's generate makes them)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


class LayerCache:
    """One block's keys and values for one lane, (n, h, t, d) each, grown
    by each forward."""

    def __init__(self):
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this forward's keys and values; return all of them."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v


def _init(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialisation: weights N(0, std), biases zero, norms one."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()


class Embed(nn.Module):
    decodes = "local"  # each position from its token and position id

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe = nn.Embedding(cfg.context, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self)

    @property
    def max_positions(self) -> int:
        """The context: positions the embedding has."""
        return self.wpe.num_embeddings

    def forward(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        if position_ids is None:  # recomputed here, never sent
            position_ids = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(position_ids))  # (n, T, C)


class Block(nn.Module):
    decodes = "cache"  # attends over the past: keeps it in cache= (LayerCache)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.kv_width = 2 * cfg.width  # cached elements per token: its key and value
        self.ln1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.fc = nn.Linear(cfg.width, 4 * cfg.width)
        self.out = nn.Linear(4 * cfg.width, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache=None):
        n, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(n, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in (q, k, v))  # (n, h, T, d)
        if cache is not None:  # this lane's earlier tokens: (n, h, past + T, d)
            k, v = cache.slot(self, LayerCache).append(k, v)
        past = k.shape[2] - T
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)  # (n, h, T, past + T)
        att = att.masked_fill(~causal_mask(T, attention_mask, x.device, past), float("-inf"))
        # A padded query row may see nothing: give it zeros, not NaN.
        att = torch.nan_to_num(F.softmax(att, dim=-1))
        y = (self.drop(att) @ v).transpose(1, 2).reshape(n, T, C)  # (n, T, C)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class Head(nn.Module):
    decodes = "local"

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.width)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))  # (n, T, V)


class GPT(nn.Module):
    """The whole model; its forward is the chain of its pieces."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.head = Head(cfg)
        if cfg.tie:
            self.head.lm_head.weight = self.embed.wte.weight

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, attention_mask=attention_mask)
        return self.head(x)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, steps: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None,
                 attention_mask: torch.Tensor | None = None,
                 do_sample: bool = True) -> torch.Tensor:
        """``steps`` tokens after ``idx`` (n, t), one at a time, each from a
        whole forward of the sequence so far (no cache): sampled at
        ``temperature``, or the most likely with ``do_sample=False``.
        ``attention_mask`` (n, t): 0 on left padding; positions then count
        real tokens only (``generation_positions``). Returns (n, t + steps)."""
        mask = torch.ones_like(idx) if attention_mask is None else attention_mask
        for _ in range(steps):
            # The last ``context`` positions (a window that slides past the end).
            win, m = idx[:, -self.cfg.context:], mask[:, -self.cfg.context:]
            logits = self._forward_with(win, m)[:, -1, :]
            if do_sample:
                probs = F.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        return idx

    def _forward_with(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx, position_ids=generation_positions(mask))
        for block in self.blocks:
            x = block(x, attention_mask=mask)
        return self.head(x)
