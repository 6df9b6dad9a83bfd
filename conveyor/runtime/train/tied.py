"""Tied parameters: one weight used by stages that live on different ranks.

The classic case is a language model whose output head reuses the input
embedding's matrix. Cut into stages, the embedding lives on the first rank
and the head on the last; each rank holds its own copy and, left alone,
computes only its own half of the gradient, so training quietly unties the
two. Here every tie is a group of parameters (one per use) and the set of
ranks that own one; before the optimizer step their gradients are summed over
a process subgroup of exactly those ranks, so every copy receives the full
gradient of the unsplit model and, stepped by the same optimizer, stays bit
for bit equal to the others.

Ties are found two ways:

* detected: the same ``Parameter`` object appears in two stages (a model
  built whole on every rank and then cut);
* declared: ``tied=[["0.wte.weight", "3.lm_head.weight"], ...]``, names of
  parameters in the stage list (stage index, then the name inside the stage),
  for stages each rank builds on its own, where no object is shared.

Groups are built collectively: ``dist.new_group`` must be called by every
rank in the same order, so every rank works out every tie, not only its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.runtime.procs.deadline import bounded

__all__ = ["TiedParameterError", "Tie", "TiedParams", "find_shared", "resolve_ties",
           "fingerprints", "check_undeclared"]


class TiedParameterError(PipelineError):
    """A parameter is shared across ranks in a way the pipeline cannot keep right."""


@dataclass
class Tie:
    """One tied weight: its names (stage-qualified), the stage of each use,
    the ranks that own a use, and this rank's parameter objects for it."""

    names: tuple[str, ...]
    stages: tuple[int, ...]
    ranks: tuple[int, ...]
    local: list[torch.nn.Parameter] = field(default_factory=list)
    group: object = None

    def __str__(self) -> str:
        return " = ".join(self.names)


def find_shared(stages: Sequence[torch.nn.Module]) -> list[tuple[tuple[int, str], ...]]:
    """Parameters that appear (as the same object) in more than one stage:
    one tuple of (stage, name inside the stage) per shared object, in the
    order of their first appearance. Needs all S stages (the whole model)."""
    uses: dict[int, list[tuple[int, str]]] = {}
    for s, stage in enumerate(stages):
        for name, p in stage.named_parameters(remove_duplicate=False):
            found = uses.setdefault(id(p), [])
            if all(u[0] != s for u in found):
                found.append((s, name))
    return [tuple(u) for u in uses.values() if len(u) > 1]


def _split_name(name: str, S: int) -> tuple[int, str]:
    head, _, rest = name.partition(".")
    if not head.isdigit() or not rest or int(head) >= S:
        raise TiedParameterError(
            f"tied name {name!r} does not name a parameter of a stage; write "
            f"'<stage>.<name in the stage>' with a stage in 0..{S - 1}, e.g. '0.wte.weight'")
    return int(head), rest


def resolve_ties(*, S: int, placement: Sequence[int], local: dict[int, torch.nn.Module],
                 declared=None, shared=None, allow: bool = True) -> list[Tie]:
    """Every tie of the pipeline (the same list on every rank).

    ``declared``: groups of stage-qualified names; ``shared``: the output of
    ``find_shared`` (None when not all stages are known here); ``allow``:
    False turns a detected cross-rank share into an error instead of a tie.

    Raises TiedParameterError for a malformed or unknown name, a group of
    fewer than two names, a name in two groups, different shapes within a
    group, or a detected share across ranks when ``allow`` is False.
    """
    groups: list[list[tuple[int, str]]] = []
    for g in declared or ():
        if isinstance(g, str) or len(g) < 2:
            raise TiedParameterError(
                f"tied group {g!r} must list at least two parameter names, e.g. "
                f"tied=[['0.wte.weight', '3.lm_head.weight']]")
        groups.append([_split_name(n, S) for n in g])
    for g in shared or ():
        g = list(g)
        ranks = {placement[s] for s, _ in g}
        if len(ranks) > 1 and not allow:
            where = ", ".join(f"stage {s} ({n}) on rank {placement[s]}" for s, n in g)
            raise TiedParameterError(
                f"one parameter is shared by {where}; each rank would train its own copy and "
                f"untie it. Pass tied=None (the default) to sum its gradients across those "
                f"ranks, or give each stage its own copy (e.g. clone the weight)")
        # A declared group may already name it: merge rather than tie twice.
        for d in groups:
            if set(d) & set(g):
                d.extend(u for u in g if u not in d)
                break
        else:
            groups.append(g)
    seen: dict[tuple[int, str], int] = {}
    ties = []
    for i, g in enumerate(groups):
        for u in g:
            if u in seen and seen[u] != i:
                raise TiedParameterError(f"parameter '{u[0]}.{u[1]}' is in two tied groups; "
                                         f"merge them into one")
            seen[u] = i
        tie = Tie(names=tuple(f"{s}.{n}" for s, n in g), stages=tuple(s for s, _ in g),
                  ranks=tuple(sorted({placement[s] for s, _ in g})))
        for s, n in g:
            if s in local:
                params = dict(local[s].named_parameters(remove_duplicate=False))
                if n not in params:
                    raise TiedParameterError(
                        f"tied name '{s}.{n}': stage {s} has no parameter {n!r}; its "
                        f"parameters include {', '.join(list(params)[:6]) or 'none'}")
                if all(p is not params[n] for p in tie.local):
                    tie.local.append(params[n])
        shapes = {tuple(p.shape) for p in tie.local}
        if len(shapes) > 1:
            raise TiedParameterError(f"tied parameters {tie} have different shapes "
                                     f"{sorted(shapes)}; only equal shapes can be tied")
        ties.append(tie)
    return ties


def fingerprints(local: dict[int, torch.nn.Module]) -> list[tuple[int, str, tuple]]:
    """(stage, name, fingerprint) of this rank's non-constant parameters: the
    shape, dtype, and a few exact sums and values. Two random matrices never
    share one; a weight tied in the model that each rank built whole does."""
    out = []
    for s, stage in local.items():
        for name, p in stage.named_parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() < 2 or bool((flat == flat[0]).all()):
                continue  # constant (ones, zeros): equal without being tied
            head = tuple(flat[:4].tolist())
            out.append((s, name, (tuple(p.shape), str(p.dtype), head,
                                  float(flat.double().sum()), float(flat.double().abs().sum()))))
    return out


def check_undeclared(per_rank: list[list[tuple[int, str, tuple]]], placement: Sequence[int],
                     ties: list[Tie]) -> None:
    """Raise when two stages on different ranks hold a parameter with the same
    values that no tie covers: most likely a tied weight that each rank built
    on its own, which would train untied.

    Raises TiedParameterError naming both and the two ways out.
    """
    covered = {n for t in ties for n in t.names}
    seen: dict[tuple, tuple[int, str]] = {}
    for entries in per_rank:
        for s, name, fp in entries:
            other = seen.setdefault(fp, (s, name))
            if other[0] != s and placement[other[0]] != placement[s] and not \
                    {f"{other[0]}.{other[1]}", f"{s}.{name}"} <= covered:
                a, b = f"{other[0]}.{other[1]}", f"{s}.{name}"
                raise TiedParameterError(
                    f"parameters '{a}' (rank {placement[other[0]]}) and '{b}' (rank "
                    f"{placement[s]}) hold identical values: a tied weight built on each rank "
                    f"would train as two. Declare it, tied=[['{a}', '{b}']], or pass tied=[] "
                    f"if they are meant to be separate")


class TiedParams:
    """This rank's side of every tie: the subgroups, the gradient sum and the
    initial agreement of values. Build it on every rank (collective)."""

    def __init__(self, ties: list[Tie], *, rank: int, world_size: int, dp_rank: int = 0,
                 dp_size: int = 1):
        self.ties = ties
        self.rank = rank
        self.base = dp_rank * world_size  # global rank of this replica's pipeline rank 0
        for tie in ties:
            # new_group is collective over the whole world, members or not:
            # every rank creates every replica's group, replica by replica.
            if len(tie.ranks) > 1 and world_size > 1:
                for d in range(dp_size):
                    g = dist.new_group([d * world_size + r for r in tie.ranks])
                    if d == dp_rank:
                        tie.group = g
        self.mine = [t for t in ties if t.local]
        self._check_and_align()

    def _check_and_align(self) -> None:
        """Same shape on every owner, then the first owner's values everywhere
        (stages built apart may start from different random weights)."""
        for tie in self.mine:
            if tie.group is None:
                with torch.no_grad():
                    for p in tie.local[1:]:
                        p.copy_(tie.local[0])
                continue
            p0 = tie.local[0]
            shape = torch.tensor([p0.numel(), p0.dim(), *p0.shape, *[0] * (8 - p0.dim())],
                                 dtype=torch.int64, device=p0.device)
            lo, hi = shape.clone(), shape.clone()
            dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=tie.group)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=tie.group)
            if not torch.equal(lo, hi):
                raise TiedParameterError(
                    f"tied parameters {tie} have different shapes on ranks {tie.ranks} "
                    f"(this rank: {tuple(p0.shape)}); only equal shapes can be tied")
            with torch.no_grad():
                dist.broadcast(p0.data, src=self.base + tie.ranks[0], group=tie.group)
                for p in tie.local[1:]:
                    p.copy_(p0)

    def sync_grads(self) -> None:
        """Sum each tie's gradient over its uses and owners; every local copy
        gets the sum. Collective over each tie's owners; call before the step."""
        for tie in self.mine:
            grads = [p.grad for p in tie.local if p.grad is not None]
            total = (torch.zeros_like(tie.local[0]) if not grads
                     else grads[0].clone() if len(grads) == 1 else torch.stack(grads).sum(0))
            if tie.group is not None:
                with bounded(f"the tie sum all-reduce of {tie}", tie.group):
                    dist.all_reduce(total, group=tie.group)
            for p in tie.local:
                p.grad = total if p is tie.local[0] else total.clone()

    def counted_here(self, params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """``params`` with each tie counted once over the whole pipeline (on its
        first owner, once): what a global gradient norm must sum."""
        skip = set()
        for tie in self.mine:
            keep = tie.local[0] if self.rank == tie.ranks[0] else None
            skip |= {id(p) for p in tie.local if p is not keep}
        return [p for p in params if id(p) not in skip]
