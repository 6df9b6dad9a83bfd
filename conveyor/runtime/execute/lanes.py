"""The prompts of a generate call laid out in lanes, and what each round of
a lane feeds its stages.

Prompts arrive as a list of 1-D token sequences of any lengths, as one flat
tensor with ``lengths`` (packed), or as a left-padded (n, T) tensor with its
attention mask. They are laid out left-padded to the longest (L tokens) and
cut into M lanes of consecutive sequences, sizes differing by at most one
(``microbatch_sizes``). Every rank holds the prompts, so every rank knows
every lane's shapes, masks and positions without a message; only stage 0
reads the token ids.

Round k of a lane (``conveyor.schedule.decode``) feeds:

    prefill chunk c (k = c < chunks): prompt columns [a_c, b_c), mask
        columns [0, b_c), positions of those columns;
    token step t = k - chunks + 1 >= 1: the token sampled last round (one
        column), mask columns [0, L + t), position length + t - 1

where a row's positions count its real tokens (padding gets 0), as Hugging
Face's generate counts them. The mask only grows by ones: a sequence that
has stopped keeps being fed the pad token, as in Hugging Face's generate,
and its tokens are dropped from the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conveyor.errors import PipelineError
from conveyor.runtime.execute.batching import microbatch_sizes

__all__ = ["Prompts", "Lane", "layout", "chunk_bounds", "lanes_of", "generation_positions"]


def generation_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows (n, T): the real tokens before each
    one, padding 0 (Hugging Face's generate counts them so)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@dataclass
class Prompts:
    """n prompts left-padded to L: ids (n, L) int64, mask (n, L) (1 token,
    0 padding), lengths (n,) real tokens per prompt."""

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def L(self) -> int:
        return self.ids.shape[1]


def _as_long(t, what: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise PipelineError(f"{what} holds {t.dtype} values; give token ids (integers)")
    return t.long().cpu()


def layout(prompts, *, attention_mask=None, lengths=None, pad_id: int = 0) -> Prompts:
    """Prompts from any of the accepted forms (see the module docstring).

    Raises PipelineError naming the problem: no prompts, an empty prompt,
    a mask of another shape, right padding (a 0 after a 1 in a row: pass
    left-padded rows, or the prompts as a list), or lengths that do not add
    up to a packed tensor's size."""
    if isinstance(prompts, torch.Tensor) and prompts.ndim == 2:
        ids = _as_long(prompts, "prompts")
        mask = (torch.ones_like(ids) if attention_mask is None
                else _as_long(attention_mask, "attention_mask"))
        if mask.shape != ids.shape:
            raise PipelineError(f"attention_mask has shape {tuple(mask.shape)} but the prompts "
                                f"{tuple(ids.shape)}; give one mask entry per token")
        if ((mask != 0) & (mask != 1)).any():
            raise PipelineError("attention_mask holds values other than 0 and 1")
        if (mask[:, 1:] < mask[:, :-1]).any():
            row = int((mask[:, 1:] < mask[:, :-1]).any(dim=1).nonzero()[0])
            raise PipelineError(
                f"prompt {row} is right-padded (its mask has a 0 after a 1); generate appends "
                f"tokens at the right, so pad on the left, or pass the prompts as a list of "
                f"sequences")
        rows = [ids[i][mask[i] == 1] for i in range(ids.shape[0])]
    else:
        if attention_mask is not None:
            raise PipelineError("attention_mask goes with a 2-D tensor of left-padded prompts; "
                                "a list of sequences needs none")
        if lengths is not None:
            flat = _as_long(prompts, "prompts").reshape(-1)
            sizes = [int(x) for x in lengths]
            if sum(sizes) != flat.numel() or any(x < 0 for x in sizes):
                raise PipelineError(f"lengths {sizes} add up to {sum(sizes)} but the packed "
                                    f"prompts hold {flat.numel()} tokens")
            rows = list(torch.split(flat, sizes))
        else:
            rows = [_as_long(p, f"prompt {i}").reshape(-1) for i, p in enumerate(prompts)]
    if not rows:
        raise PipelineError("no prompts given; pass at least one sequence of token ids")
    empty = [i for i, r in enumerate(rows) if r.numel() == 0]
    if empty:
        raise PipelineError(f"prompt {empty[0]} is empty; every sequence needs at least one "
                            f"token to continue from")
    L = max(r.numel() for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - r.numel():] = r
        mask[i, L - r.numel():] = 1
    return Prompts(ids, mask, mask.sum(dim=1))


def chunk_bounds(L: int, chunk: int | None) -> list[tuple[int, int]]:
    """The prefill chunks' column ranges: [0, L) in pieces of ``chunk``
    tokens (the last may be shorter); None: one piece."""
    if chunk is None or chunk >= L:
        return [(0, L)]
    return [(a, min(a + chunk, L)) for a in range(0, L, chunk)]


@dataclass
class Lane:
    """One lane: ``rows`` (the sequences' indices in the batch) and what its
    rounds feed (see the module docstring), on ``device``."""

    index: int
    rows: list[int]
    ids: torch.Tensor        # (n, L) left-padded prompts
    mask: torch.Tensor       # (n, L + new_tokens): the prompt's, then ones
    positions: torch.Tensor  # (n, L) of the prompt's columns
    lengths: torch.Tensor    # (n,) real prompt tokens
    bounds: list[tuple[int, int]]

    @property
    def n(self) -> int:
        return len(self.rows)

    def key(self, k: int) -> tuple[int, int]:
        """(sequences, tokens per sequence) of round k: the shapes' key."""
        return (self.n, self.bounds[k][1] - self.bounds[k][0] if k < len(self.bounds) else 1)

    def side(self, k: int) -> dict:
        """The side inputs of round k (its mask up to this round's last
        column, and its position ids)."""
        chunks, L = len(self.bounds), self.ids.shape[1]
        if k < chunks:
            a, b = self.bounds[k]
            return {"attention_mask": self.mask[:, :b], "position_ids": self.positions[:, a:b]}
        t = k - chunks + 1
        return {"attention_mask": self.mask[:, :L + t],
                "position_ids": (self.lengths + t - 1)[:, None]}

    def prompt(self, k: int) -> torch.Tensor:
        a, b = self.bounds[k]
        return self.ids[:, a:b]


def lanes_of(p: Prompts, M: int, *, new_tokens: int, chunk: int | None,
             device: torch.device) -> list[Lane]:
    """The M lanes of ``p`` (see the module docstring)."""
    bounds = chunk_bounds(p.L, chunk)
    pos = generation_positions(p.mask)
    full = torch.cat([p.mask, torch.ones(p.n, new_tokens, dtype=torch.long)], dim=1)
    out, start = [], 0
    for lane, size in enumerate(microbatch_sizes(p.n, M)):
        sl = slice(start, start + size)
        out.append(Lane(lane, list(range(start, start + size)), p.ids[sl].to(device),
                        full[sl].to(device), pos[sl].to(device), p.lengths[sl].to(device),
                        bounds))
        start += size
    return out
