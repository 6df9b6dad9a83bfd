"""Checkpoints of a pipeline, keyed by the unsplit model's names, portable across P.

Layout of a checkpoint directory::

    manifest.json   written by rank 0 last: format, version, P, S, step,
                    which rank file holds which parameter and buffer names,
                    and each file's size
    rank{r}.{id}.pt one per rank, written by that rank with ``torch.save``
                    (``id``: random per save; see ``ckptdir`` for the marker
                    and journal files beside them):
                    "model":  {unsplit name: tensor} for this rank's stages
                    "optim":  {"state": {unsplit name: per-parameter state},
                               "groups": [hyper-parameters + names]}
                    "rng":    this rank's torch CPU (and CUDA) generator state
                    "scheduler": the LR scheduler's state_dict (rank 0 only)

Names are those of the model before it was cut (``"3.weight"`` for the fourth
layer of an ``nn.Sequential``), so a checkpoint saved at P=4 loads at P=2, at
P=1 and, through ``export_state_dict``, into the plain unsplit module. A
pipeline built with ``Pipeline.from_stages`` has no unsplit model; its names
are ``"stage{s}.<name>"`` and it reloads only with the same S.

Why not ``torch.distributed.checkpoint``: in torch 2.13 its default load
planner reads every non-tensor entry (optimizer hyper-parameters, step
counts) with ``torch.load(weights_only=False)`` and its reader unpickles the
``.metadata`` file with ``pickle.load``; both run arbitrary code from a
checkpoint. Per-rank ``torch.save`` files read with ``weights_only=True``
and a JSON manifest avoid that, and need no collective beyond barriers.

Atomic, and touching only what it wrote (``conveyor.runtime.procs.ckptdir``):
the folder is never renamed (a symbolic link stays one); every rank writes
a new file ``rank{r}.{id}.pt`` beside the current ones, and rank 0 publishes
them by renaming a new ``manifest.json`` over the old one, then removes the
files the old manifest named. A journal names every file a save creates, so
what a crash leaves is removed by the next save, and nothing else is. All
ranks must see the same filesystem (a shared one across nodes).

Data parallelism: the replicas hold the same weights and optimizer state, so
replica 0 (dp rank 0) writes the checkpoint alone (its pipeline ranks' files,
the manifest saying its P and dp) and every replica loads it; the checkpoint
is the same as one saved without data parallelism and loads at any dp and P.
The RNG state is restored only when saved and loaded at the same P with
dp = 1 (replicas draw different random streams; only replica 0's is saved).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conveyor.partition import resolve_balance, stage_ranges
from conveyor.runtime.execute.stages import layers_of
from conveyor.runtime.procs import ckptdir
from conveyor.runtime.procs.ckptdir import CheckpointError
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.train.checkpoint_files import (
    FORMAT, VERSION, file_of, read_manifest, read_rank_file, resolve,
)

__all__ = ["CheckpointError", "layer_names", "save_pipeline", "load_pipeline", "export_state_dict",
           "read_manifest"]

# -- names ----------------------------------------------------------------------------

def layer_names(model, S: int, balance) -> dict[int, list[str]]:
    """Per stage, the unsplit model's names of its layers (an nn.Sequential's
    child names, else "0", "1", ...): the keys of a checkpoint."""
    names = (list(model._modules) if isinstance(model, torch.nn.Sequential)
             else [str(i) for i in range(len(layers_of(model)))])
    return {s: names[r.start:r.stop]
            for s, r in enumerate(stage_ranges(resolve_balance(len(names), S, balance)))}


def _stages(pipe) -> dict:
    """This rank's stages as the model's layers: a stage wrapped for activation
    checkpointing (CheckpointedStage) is seen through, so its keys are those
    of the layers it wraps."""
    from conveyor.runtime.execute.recompute import CheckpointedStage

    return {s: (m.stage if isinstance(m, CheckpointedStage) else m)
            for s, m in pipe.stages.items()}


def stage_names(pipe) -> dict[int, dict[str, str]]:
    """Per local stage: {stage-local state_dict name: unsplit model name}."""
    out = {}
    for s, module in _stages(pipe).items():
        layer_names = pipe.layer_names[s] if pipe.layer_names is not None else None
        table = {}
        for local in module.state_dict().keys():
            head, _, rest = local.partition(".")
            if layer_names is None:
                table[local] = f"stage{s}.{local}"
            else:  # SequentialStage names its layers "0", "1", ... in order
                layer = layer_names[int(head)]
                table[local] = f"{layer}.{rest}" if rest else layer
        out[s] = table
    return out


def _param_names(pipe) -> dict[int, str]:
    """id(parameter) -> unsplit name, for this rank's parameters."""
    names = stage_names(pipe)
    out = {}
    for s, module in _stages(pipe).items():
        for local, p in module.named_parameters():
            out.setdefault(id(p), names[s][local])
    return out


# -- what a rank holds ------------------------------------------------------------------

def _rank_state(pipe, scheduler, optim=None) -> dict[str, Any]:
    names = stage_names(pipe)
    model = {}
    for s, module in _stages(pipe).items():
        for local, t in module.state_dict().items():
            model[names[s][local]] = t.detach().cpu()
    state: dict[str, Any] = {"model": model, "rng": _rng_state(pipe.ctx.device)}
    if pipe.optimizer is not None:
        state["optim"] = optim if optim is not None else _optim_state(pipe.optimizer,
                                                                      _param_names(pipe))
    if scheduler is not None and pipe.ctx.rank == 0:
        state["scheduler"] = scheduler.state_dict()
    return state


def _optim_state(opt, pname: dict[int, str]) -> dict:
    """The optimizer's state_dict with parameter indices replaced by names.

    torch numbers parameters in the order of ``param_groups``; that is the
    order walked here."""
    sd = opt.state_dict()
    order = [pname[id(p)] for g in opt.param_groups for p in g["params"]]
    state = {order[i]: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in st.items()}
             for i, st in sd["state"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "groups": groups}


def _sharded_optim(pipe) -> dict | None:
    """With ``shard_optimizer``: the optimizer state gathered per parameter name
    over the dp replicas (collective over the dp group; every replica calls
    it), the same layout as ``_optim_state``. None otherwise."""
    shards = getattr(pipe, "shards", None)
    return None if shards is None else shards.gather_state(_param_names(pipe))


def _rng_state(device: torch.device) -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


# -- save -----------------------------------------------------------------------------

def _barrier(pipe) -> None:
    if pipe.ctx.global_size > 1:
        with bounded("the checkpoint barrier", None):
            dist.barrier()  # the whole world: no replica reads before the files are in place


def _write_rank_file(path: Path, state: dict) -> None:
    """Write one rank's file, which must not exist yet (O_EXCL: never over
    another file); fsync so that the rename that publishes it cannot outrun
    the data."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _begin(pipe, path: Path) -> str:
    """Global rank 0 readies the folder and picks this save's id; every rank
    of the world learns the id, or the error, so all go on or all raise."""
    first = pipe.ctx.rank == 0 and pipe.ctx.dp_rank == 0
    box: list = [None]
    if first:
        save_id = ckptdir.new_id()
        try:
            ckptdir.begin(path, nfiles=pipe.ctx.world_size, save_id=save_id)
            box = [("ok", save_id)]
        except (CheckpointError, OSError) as e:
            msg = (str(e) if isinstance(e, CheckpointError) else
                   f"cannot save a checkpoint at {str(path)!r}: {e.strerror or e}; give a "
                   f"writable folder")
            box = [("error", msg)]
    if pipe.ctx.global_size > 1:
        with bounded("the checkpoint's start (rank 0's verdict on the folder)", None):
            dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        err = CheckpointError(value)
        err.same_on_every_rank = True  # one report, not P copies
        raise err
    return value


def save_pipeline(pipe, path, *, scheduler=None) -> Path:
    """Collective: every rank writes its part of the checkpoint at ``path``.

    In: a Pipeline, a folder path (the same on every rank, on a filesystem
    every rank sees; new, empty, a checkpoint conveyor wrote, or a symbolic
    link to one of those), an optional LR scheduler whose state rank 0
    stores. Out: the checkpoint folder. Raises CheckpointError when ``path``
    is a file or a folder holding files that are not a conveyor checkpoint
    (they are never replaced), on every rank alike.
    """
    path = Path(path)
    save_id = _begin(pipe, path)
    rank = pipe.ctx.rank
    optim = _sharded_optim(pipe)  # before replicas part: a sharded state is gathered
    if pipe.ctx.dp_rank != 0:  # replica 0 writes for all (same weights and state)
        _barrier(pipe)
        return path
    state = _rank_state(pipe, scheduler, optim)
    name = ckptdir.rank_file(rank, save_id)
    _write_rank_file(path / name, state)
    mine = (name, sorted(state["model"]), os.stat(path / name).st_size)
    gathered = [None] * pipe.ctx.world_size if rank == 0 else None
    if pipe.ctx.world_size > 1:
        with bounded("the checkpoint's name gather", pipe.ctx.pp_group):
            dist.gather_object(mine, gathered, group=pipe.ctx.pp_group, group_dst=0)
    else:
        gathered = [mine]
    if rank == 0:
        manifest = {"format": FORMAT, "version": VERSION, "P": pipe.ctx.world_size,
                    "dp": pipe.ctx.dp_size,
                    "S": pipe.schedule.S, "step": pipe.steps,
                    "portable": pipe.layer_names is not None,
                    # the loss scale and skipped updates: the same on every rank
                    "amp": pipe.loop.amp_state(),
                    "files": {f: names for f, names, _ in gathered},
                    "sizes": {f: size for f, _, size in gathered}}
        ckptdir.commit(path, manifest, save_id)
    _barrier(pipe)  # nobody reads the checkpoint before it is in place
    return path


# -- load -----------------------------------------------------------------------------

def _files_for(manifest: dict, wanted: set[str]) -> list[str]:
    return [f for f, names in manifest["files"].items() if wanted & set(names)]


def load_pipeline(pipe, path, *, scheduler=None) -> dict:
    """Load the checkpoint at ``path`` into this rank's stages, optimizer,
    step count, RNG (when saved at the same P) and ``scheduler``.

    Not collective (every rank reads only the files holding its names), but
    every rank must call it before the next step. Out: {"step", "saved_P",
    "rng_restored"}. Raises CheckpointError naming missing parameters.
    """
    d = resolve(path)
    manifest = read_manifest(d)
    names = stage_names(pipe)
    wanted = {g for table in names.values() for g in table.values()}
    files = {f: read_rank_file(d, f, manifest) for f in _files_for(manifest, wanted)}
    model = {k: v for st in files.values() for k, v in st["model"].items()}
    missing = sorted(wanted - model.keys())
    if missing:
        hint = ("the pipeline was built with from_stages and the checkpoint with a different "
                "S" if pipe.layer_names is None or not manifest["portable"] else
                "the model differs from the one saved")
        raise CheckpointError(f"checkpoint {d} lacks {len(missing)} names this rank needs "
                              f"({', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}): "
                              f"{hint}")
    for s, module in _stages(pipe).items():
        for local, t in module.state_dict().items():
            g = names[s][local]
            if model[g].shape != t.shape:
                raise CheckpointError(f"checkpoint {d} does not fit stage {s}: {g} is "
                                      f"{tuple(model[g].shape)} there, {tuple(t.shape)} here; "
                                      f"build the model that was saved")
        module.load_state_dict({local: model[g] for local, g in names[s].items()})
    if pipe.optimizer is not None:
        saved = [st["optim"] for st in files.values() if "optim" in st]
        if not saved:
            raise CheckpointError(f"checkpoint {d} has no optimizer state but this pipeline "
                                  f"has an optimizer; save one with an optimizer or pass "
                                  f"optimizer=None")
        if getattr(pipe, "shards", None) is not None:  # sliced into this replica's shard
            pipe.shards.load_state(_param_names(pipe), saved)
        else:
            _load_optim(pipe.optimizer, _param_names(pipe), saved)
    pipe.steps = manifest["step"]
    pipe.loop.load_amp_state(manifest.get("amp"))
    rng_restored = (manifest["P"] == pipe.ctx.world_size and pipe.ctx.dp_size == 1
                    and manifest.get("dp", 1) == 1)
    if rng_restored:
        own = files.get(file_of(manifest, pipe.ctx.rank)) or read_rank_file(
            d, file_of(manifest, pipe.ctx.rank), manifest)
        torch.set_rng_state(own["rng"]["cpu"])
        if "cuda" in own["rng"] and pipe.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(own["rng"]["cuda"], pipe.ctx.device)
    if scheduler is not None:
        sched_state = (files.get(file_of(manifest, 0))
                       or read_rank_file(d, file_of(manifest, 0), manifest)).get("scheduler")
        if sched_state is None:
            raise CheckpointError(f"checkpoint {d} has no scheduler state; save with "
                                  f"scheduler= or load without it")
        scheduler.load_state_dict(sched_state)
    return {"step": manifest["step"], "saved_P": manifest["P"], "rng_restored": rng_restored}


def _load_optim(opt, pname: dict[int, str], saved: list[dict]) -> None:
    """Rebuild a state_dict in this optimizer's own numbering from saved
    per-name state, and take each group's hyper-parameters from the saved
    group that held its first parameter."""
    state_by_name = {k: v for s in saved for k, v in s["state"].items()}
    group_of = {n: g for s in saved for g in s["groups"] for n in g["params"]}
    order = [pname[id(p)] for g in opt.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    groups = []
    for g in opt.param_groups:
        first = pname[id(g["params"][0])]
        if first not in group_of:
            raise CheckpointError(f"checkpoint has no optimizer group holding {first}")
        hyper = {k: v for k, v in group_of[first].items() if k != "params"}
        groups.append({**hyper, "params": [index[pname[id(p)]] for p in g["params"]]})
    state = {index[n]: st for n, st in state_by_name.items() if n in index}
    opt.load_state_dict({"state": state, "param_groups": groups})


def export_state_dict(path) -> dict[str, torch.Tensor]:
    """The model weights of the checkpoint at ``path`` as one ordinary state
    dict, for ``unsplit_model.load_state_dict``. Needs no process group.

    Raises CheckpointError for a checkpoint saved from ``from_stages`` stages,
    whose names are per stage, not the unsplit model's."""
    d = resolve(path)
    manifest = read_manifest(d)
    if not manifest["portable"]:
        raise CheckpointError(f"checkpoint {d} was saved from Pipeline.from_stages stages and "
                              f"is keyed by stage, not by an unsplit model; load it into a "
                              f"pipeline with S={manifest['S']}")
    out: dict[str, torch.Tensor] = {}
    for f in manifest["files"]:
        out.update(read_rank_file(d, f, manifest)["model"])
    return out

