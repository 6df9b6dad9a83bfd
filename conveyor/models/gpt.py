"""A small decoder-only transformer (GPT), written as a chain of pieces.

    embed -> blocks.0 .. blocks.{L-1} -> head

so that it cuts by name (``conveyor.runtime.execute.split``). The head's output matrix
is the embedding's (tied, the same Parameter), which the pipeline ties across
ranks. Side input: ``attention_mask`` (n, T), 1 for tokens, 0 for padding,
given to every block as a keyword; positions are recomputed from T in the
embedding (nothing but the hidden state crosses a cut).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GPTConfig", "GPT", "Embed", "Block", "Head", "causal_mask"]


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


def causal_mask(T: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean (n or 1, 1, T, T): True where query t may attend to key u
    (u <= t, and u is not padding)."""
    allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


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
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe = nn.Embedding(cfg.context, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)  # recomputed here, never sent
        return self.drop(self.wte(idx) + self.wpe(pos))  # (n, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
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

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        n, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(n, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in (q, k, v))  # (n, h, T, d)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)  # (n, h, T, T)
        att = att.masked_fill(~causal_mask(T, attention_mask, x.device), float("-inf"))
        # A padded query row may see nothing: give it zeros, not NaN.
        att = torch.nan_to_num(F.softmax(att, dim=-1))
        y = (self.drop(att) @ v).transpose(1, 2).reshape(n, T, C)  # (n, T, C)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class Head(nn.Module):
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
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``steps`` tokens after ``idx`` (n, t), one at a time."""
        for _ in range(steps):
            logits = self(idx[:, -self.cfg.context:])[:, -1, :] / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
