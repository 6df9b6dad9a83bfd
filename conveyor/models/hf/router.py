"""An MoE router's load-balancing loss, as Hugging Face computes it, in pieces.

With ``config.output_router_logits=True`` Mixtral and Qwen2-MoE add
``router_aux_loss_coef * aux`` to ``.loss``, where (``load_balancing_loss_func``)

    aux = E * sum_e (tokens_e / rows) * (probs_e / rows)

with tokens_e the (unpadded) top-k assignments to expert e and probs_e the
summed router probabilities, both summed over every MoE layer and token of
the forward call, and rows the (unpadded) token count times the layers. The
loss couples all layers, so no stage can compute its share alone. Each MoE
``Block`` adds its layers' statistics to a carry, (probs (E,) float32,
with gradient; tokens (E,) int64; rows (1,) int64), that crosses each cut with
the hidden state (2E + 1 numbers per micro-batch); the ``Head`` finishes the
formula and adds it as an auxiliary loss (``conveyor.runtime.execute.aux``),
whose gradient flows back to every router through the carried probabilities.
The counts are integers, so int64 keeps them exact under any boundary dtype;
the sums follow the library's order and dtypes (float32), so the value is the
library's, bit for bit, for each forward call: with M micro-batches the step's
router loss is the size-weighted mean of the M micro-batches' (what
accumulating the model's own ``.loss`` over M calls gives).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from conveyor.runtime.execute.aux import add_aux_loss

__all__ = ["RouterLoss"]


class _Taps:
    """Forward hooks on a layer's routers that keep their logits while active."""

    def __init__(self, routers: list[nn.Module]):
        self.active: list | None = None
        for m in routers:
            m.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if self.active is not None:
            self.active.append(out[0] if isinstance(out, tuple) else out)

    def __enter__(self) -> list:
        self.active = []
        return self.active

    def __exit__(self, *exc) -> None:
        self.active = None


class RouterLoss:
    """The router loss of one model: ``is_router(module)`` picks the router
    modules (their output, or its first element, is the router logits,
    (tokens, E)); ``num_experts`` E, ``top_k``, ``coef`` as in the config."""

    def __init__(self, is_router: Callable[[nn.Module], bool], *, num_experts: int, top_k: int,
                 coef: float):
        self.is_router, self.E, self.top_k, self.coef = is_router, num_experts, top_k, coef

    def tap(self, layer: nn.Module) -> _Taps:
        return _Taps([m for m in layer.modules() if self.is_router(m)])

    def add(self, carry: tuple, logits: list, attention_mask, hidden) -> tuple:
        """The carry after one layer whose routers gave ``logits``."""
        dev = hidden.device
        if carry:
            probs, tokens, rows = carry
        else:
            probs = torch.zeros(self.E, dtype=torch.float32, device=dev)
            tokens = torch.zeros(self.E, dtype=torch.int64, device=dev)
            rows = torch.zeros(1, dtype=torch.int64, device=dev)
        flat = (None if attention_mask is None
                else attention_mask.reshape(-1).to(device=dev, dtype=torch.float32))
        for gate in logits:
            weights = torch.softmax(gate.to(dev), dim=-1)  # (tokens, E)
            _, chosen = torch.topk(weights, self.top_k, dim=-1)
            if flat is None:
                kind = torch.float32 if dev.type in ("cpu", "mps") else torch.int32
                count = torch.histc(chosen.reshape(-1).to(kind), bins=self.E, min=0, max=self.E)
                probs = probs + weights.float().sum(dim=0)
                rows = rows + weights.shape[0]
            else:
                count = torch.zeros(self.E, dtype=torch.float32, device=dev).scatter_add_(
                    0, chosen.reshape(-1), flat.repeat_interleave(self.top_k))
                probs = probs + (weights.float() * flat.unsqueeze(-1)).sum(dim=0)
                rows = rows + flat.sum().to(torch.int64)
            tokens = tokens + count.to(torch.int64)
        return probs, tokens, rows

    def value(self, carry: tuple) -> torch.Tensor:
        """coef * aux from a finished carry, in float32 as the library computes it."""
        probs, tokens, rows = carry
        total = rows.to(torch.float32)
        per_expert = tokens.to(torch.float32) / total
        prob_per_expert = probs / total
        aux = torch.sum(per_expert * prob_per_expert.unsqueeze(0)) * self.E
        return self.coef * aux

    def finish(self, carry: tuple, dtype: torch.dtype) -> None:
        """Add coef * aux as the auxiliary loss "router" (in the logits' dtype,
        as the library adds it to its loss)."""
        add_aux_loss("router", self.value(carry).to(dtype))
