"""The 2-D rank mesh: dp replicas of a P-rank pipeline.

World = dp x P processes. Global rank g = d * P + p is pipeline rank p of
replica d (replica 0 holds global ranks 0 .. P-1, replica 1 the next P, ...):
torch's ``init_device_mesh(..., (dp, P), mesh_dim_names=("dp", "pp"))`` lays
ranks out the same way. Two kinds of process group:

* pp group of replica d: global ranks d*P .. d*P+P-1; every transfer,
  loss all-reduce, clock alignment, agreement check, timeline gather, tied
  weight and gradient norm of a pipeline stays inside it;
* dp group of pipeline rank p: global ranks p, P+p, 2P+p, ...; the gradient
  all-reduce of the replicas (``conveyor.runtime.train.dataparallel``) and the loss
  sum run on it.

``dist.new_group`` is collective over the whole world, so every rank creates
every group, in the same order (all pp groups by replica, then all dp groups
by pipeline rank). With dp=1 nothing is created: the pipeline keeps the
default group, exactly as without this module.
"""

from __future__ import annotations

import dataclasses

import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.runtime.transport.group import RankContext

__all__ = ["split_mesh", "from_device_mesh", "from_groups", "resolve_mesh"]

# (default group, world, dp) -> (pp groups, dp groups): made once per process group
_GROUPS: dict[tuple[int, int, int], tuple[list, list]] = {}


def _check_dp(dp, world: int) -> int:
    if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
        raise PipelineError(f"dp={dp!r}; use a positive integer number of pipeline replicas "
                            f"(1: no data parallelism)")
    if world % dp:
        divisors = [k for k in range(1, world + 1) if world % k == 0]
        raise PipelineError(
            f"dp={dp} does not divide the world size {world}: the world is dp x P processes; "
            f"start a multiple of {dp} processes or use dp in {divisors}")
    return dp


def _groups(world: int, dp: int) -> tuple[list, list]:
    """Every rank's pp and dp groups, created once per (world, dp) in the same
    order on every rank (new_group is collective over the world)."""
    key = (id(dist.group.WORLD), world, dp)
    if key not in _GROUPS:
        P = world // dp
        pp = [dist.new_group([d * P + p for p in range(P)]) for d in range(dp)]
        dpg = [dist.new_group([d * P + p for d in range(dp)]) for p in range(P)]
        _GROUPS[key] = (pp, dpg)
    return _GROUPS[key]


def split_mesh(ctx: RankContext, dp: int) -> RankContext:
    """``ctx`` (a whole world: rank and world_size global) seen as pipeline rank
    ``g % P`` of replica ``g // P``, with P = world / dp.

    Collective over the world when dp > 1 (creates the groups on first use).
    Returns ``ctx`` itself for dp=1. Raises PipelineError for a dp that is not
    a positive divisor of the world size.
    """
    world = ctx.world_size
    _check_dp(dp, world)
    if dp == 1:
        return ctx
    P = world // dp
    pp, dpg = _groups(world, dp)
    d, p = divmod(ctx.rank, P)
    return dataclasses.replace(ctx, rank=p, world_size=P, dp_rank=d, dp_size=dp,
                               pp_group=pp[d], dp_group=dpg[p])


def from_device_mesh(ctx: RankContext, mesh) -> RankContext:
    """``ctx`` placed on a torch ``DeviceMesh`` whose dims are named ("dp", "pp")
    and laid out as global rank = d * P + p (what ``init_device_mesh`` builds).

    Raises PipelineError for other dim names or another rank layout."""
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if names != ("dp", "pp"):
        raise PipelineError(f"mesh has dims {names or 'without names'}; build it with "
                            f"mesh_dim_names=('dp', 'pp')")
    dp, P = mesh.size(0), mesh.size(1)
    layout = mesh.mesh.tolist()
    if layout != [[d * P + p for p in range(P)] for d in range(dp)]:
        raise PipelineError(f"mesh lays ranks out as {layout}; conveyor needs global rank "
                            f"= d * P + p (init_device_mesh's order)")
    if dp == 1:
        return ctx
    return dataclasses.replace(ctx, rank=mesh.get_local_rank("pp"), world_size=P,
                               dp_rank=mesh.get_local_rank("dp"), dp_size=dp,
                               pp_group=mesh.get_group("pp"), dp_group=mesh.get_group("dp"))


def from_groups(ctx: RankContext, *, pp_group, dp_group) -> RankContext:
    """``ctx`` (a whole world) on process groups you made: ``pp_group`` this
    rank's pipeline, ``dp_group`` its replicas. Pass the result as
    ``Pipeline(..., ctx=...)``.

    Raises PipelineError unless the groups follow the layout global rank =
    d * P + p (pipeline: consecutive ranks; replicas: every P-th rank)."""
    pp = dist.get_process_group_ranks(pp_group)
    dpr = dist.get_process_group_ranks(dp_group)
    P, dp, g = len(pp), len(dpr), ctx.rank
    if g not in pp or g not in dpr or ctx.world_size != P * dp:
        raise PipelineError(f"rank {g}: pipeline group {pp} and data-parallel group {dpr} "
                            f"must both hold this rank and multiply to the world size "
                            f"{ctx.world_size}")
    d, p = divmod(g, P)
    if pp != [d * P + q for q in range(P)] or dpr != [e * P + p for e in range(dp)]:
        raise PipelineError(f"rank {g}: pipeline group {pp} and data-parallel group {dpr} do "
                            f"not follow global rank = d * P + p; the pipeline group must be "
                            f"{[d * P + q for q in range(P)]} and the data-parallel group "
                            f"{[e * P + p for e in range(dp)]}")
    if dp == 1:
        return dataclasses.replace(ctx, pp_group=pp_group if P != ctx.world_size else None)
    return dataclasses.replace(ctx, rank=p, world_size=P, dp_rank=d, dp_size=dp,
                               pp_group=pp_group, dp_group=dp_group)


def resolve_mesh(ctx: RankContext, *, dp: int | None, mesh) -> RankContext:
    """The pipeline's context from ``Pipeline(dp=..., mesh=...)``: a context
    already on a mesh is kept; else ``mesh`` (a DeviceMesh) or ``dp`` splits
    the world. Raises PipelineError for conflicting or bad values."""
    if ctx.dp_size > 1:
        if dp not in (None, ctx.dp_size) or mesh is not None:
            raise PipelineError(f"ctx is already replica {ctx.dp_rank} of dp={ctx.dp_size}; "
                                f"leave dp= and mesh= out when passing such a ctx")
        return ctx
    if mesh is not None:
        if dp is not None:
            raise PipelineError("pass dp= or mesh=, not both (the mesh sets dp)")
        return from_device_mesh(ctx, mesh)
    return split_mesh(ctx, 1 if dp is None else dp)
