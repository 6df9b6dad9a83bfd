"""Cutting a step's batch into micro-batches.

Micro-batches are slices along dim 0 whose sizes differ by at most one, the
larger first (B=10, M=4: 3, 3, 2, 2), so every rank can compute them from B
alone. For a loss that averages over its micro-batch, micro-batch mb's loss is
weighted by size_mb / B: the weighted sum is then the mean over the whole
batch, and so are its gradients, exactly as in one unsplit step.
"""

from __future__ import annotations

import torch

from conveyor.runtime.errors import StageError
from conveyor.runtime.execute.stepdata import StepData

__all__ = ["microbatch_sizes", "split_batch"]


def microbatch_sizes(batch: int, M: int) -> list[int]:
    """Sizes of the M micro-batches of a batch (larger first, differing by <= 1)."""
    k, r = divmod(batch, M)
    return [k + 1 if i < r else k for i in range(M)]


def split_batch(inputs, targets, batch_size, *, rank: int, stages, S: int, M: int,
                device: torch.device, forward_only: bool, mean: bool) -> StepData:
    """This rank's StepData: micro-batch sizes and weights, plus the input
    slices if it holds stage 0 and the target slices if it holds stage S-1.

    Raises StageError (naming the rank and its stages) when the batch size is
    unknown or inconsistent, smaller than M, or a needed part is missing.
    """
    here = f"rank {rank} (stage {', '.join(map(str, stages))})"
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    batches = {}
    if inputs is not None:
        batches["inputs"] = _batch_of(inputs, "inputs", here, rank)
    if targets is not None and not forward_only:
        batches["targets"] = _batch_of(targets, "targets", here, rank)
    if batch_size is not None:
        batches["batch_size"] = batch_size
    if not batches:
        raise StageError(f"{here} cannot tell the batch size: pass the batch (inputs and "
                         f"targets) on every rank, or batch_size=", rank=rank)
    if len(set(batches.values())) > 1:
        raise StageError(f"{here}: the batch sizes disagree ({batches}); pass matching "
                         f"inputs, targets and batch_size", rank=rank)
    B = next(iter(batches.values()))
    if B == 0:
        raise StageError(
            f"{here}: the batch is empty ({', '.join(f'{k} {v}' for k, v in batches.items())} "
            f"samples along dim 0); pass a batch of at least M={M} samples (one per "
            f"micro-batch)", rank=rank, same_on_every_rank=True)
    if B < M:
        raise StageError(
            f"{here}: a batch of {B} sample{'s' if B != 1 else ''} cannot be cut into M={M} "
            f"micro-batches; use microbatches <= {B} or a batch of at least {M}",
            rank=rank, same_on_every_rank=True)
    sizes = microbatch_sizes(B, M)
    data = StepData(sizes=sizes, weights=[n / B if mean else 1.0 for n in sizes])
    if 0 in stages:
        if inputs is None:
            raise StageError(f"{here} holds the first stage and needs the inputs; pass them "
                             f"to step()", rank=rank, stage=0)
        data.inputs = list(zip(*(torch.split(t.to(device), sizes) for t in inputs)))
    if S - 1 in stages and not forward_only:
        if targets is None:
            raise StageError(f"{here} holds the last stage and needs the targets; pass them "
                             f"to step()", rank=rank, stage=S - 1)
        if isinstance(targets, torch.Tensor):
            data.targets = list(torch.split(targets.to(device), sizes))
        else:
            data.targets = list(zip(*(torch.split(t.to(device), sizes) for t in targets)))
    return data


def _batch_of(obj, what: str, here: str, rank: int) -> int:
    tensors = [obj] if isinstance(obj, torch.Tensor) else list(obj)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise StageError(f"{here}: {what} must be a tensor or a tuple of tensors with the batch "
                         f"along dim 0", rank=rank)
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) > 1:
        raise StageError(f"{here}: the {what} tensors have different batch sizes "
                         f"{sorted(sizes)}; they must agree along dim 0", rank=rank)
    return sizes.pop()
