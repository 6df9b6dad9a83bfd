"""A pipeline's weights as one state dict under the model's own names.

``Pipeline.export_state_dict()`` gathers every rank's stages into one
ordinary state dict on one rank, keyed as the model that was cut names them,
for every way a pipeline is built:

- ``Pipeline(model)`` (an ``nn.Sequential`` or list of layers): the unsplit
  model's names (``"3.weight"``, or its child names);
- ``Pipeline.from_stages`` of ``Chain`` stages (``split_by_names``,
  ``build_stage``): the names the cut model has; for the Hugging Face
  adapter, the HF model's own (``model.layers.2.self_attn.q_proj.weight``),
  a tied matrix under both of its names, so the result loads with
  ``load_state_dict`` and saves with ``save_pretrained(state_dict=...)``;
- other ``from_stages`` modules: ``"stage{s}.<name>"``, or what
  ``rename(s, name)`` returns (a name or a list of names).

Persistent buffers come along (they are in a ``state_dict``). Tied copies
are equal after every step (the tie keeps them so), so any copy will do.
With data parallelism every replica holds the same weights; each replica's
pipeline gathers its own. Collective over the pipeline's ranks (one
``gather_object``); the whole dict is built on one rank only.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from conveyor.runtime.execute.recompute import CheckpointedStage
from conveyor.runtime.execute.split import Chain
from conveyor.runtime.execute.stages import SequentialStage
from conveyor.runtime.procs.deadline import bounded

__all__ = ["export_state", "local_state"]


def _names(pipe, s: int, module, rename) -> Callable[[str], list[str]]:
    """stage-local state-dict key -> the model's names of that tensor."""
    if rename is not None:
        def renamed(local: str) -> list[str]:
            got = rename(s, local)
            return [got] if isinstance(got, str) else list(got)
        return renamed
    if pipe.layer_names is not None and isinstance(module, SequentialStage):
        layers = pipe.layer_names[s]

        def unsplit(local: str) -> list[str]:  # its layers are "0", "1", ... in order
            head, _, rest = local.partition(".")
            return [f"{layers[int(head)]}.{rest}" if rest else layers[int(head)]]
        return unsplit
    if isinstance(module, Chain):
        table = module.export_names or {}
        return lambda local: table.get(local, [local])
    return lambda local: [f"stage{s}.{local}"]


def local_state(pipe, *, rename=None) -> dict[str, torch.Tensor]:
    """This rank's stages' state, {model name: tensor on the CPU, detached}."""
    out: dict[str, torch.Tensor] = {}
    for s, module in pipe.stages.items():
        if isinstance(module, CheckpointedStage):
            module = module.stage
        names = _names(pipe, s, module, rename)
        for local, t in module.state_dict().items():
            value = t.detach().cpu()
            for name in names(local):
                out[name] = value  # the names of one tensor share one tensor
    return out


def export_state(pipe, *, rename=None, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """Collective over the pipeline: the whole model's state dict (module
    docstring) on pipeline rank ``dst``, None on the others."""
    mine = local_state(pipe, rename=rename)
    if pipe.ctx.world_size == 1:
        return mine
    parts = [None] * pipe.ctx.world_size if pipe.ctx.rank == dst else None
    with bounded("the export's gather", pipe.ctx.pp_group):
        dist.gather_object(mine, parts, group=pipe.ctx.pp_group, group_dst=dst)
    if parts is None:
        return None
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        out.update(part)
    return out
