"""Checkpoints of a pipeline, keyed by the unsplit model's names, portable across P.

Layout of a checkpoint directory::

    manifest.json   written by rank 0 last: format, version, P, S, step, and
                    which rank file holds which parameter and buffer names
    rank{r}.pt      one per rank, written by that rank with ``torch.save``:
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

Atomic: every rank writes into ``<dir>.tmp``; after a barrier rank 0 writes
the manifest there and swaps it into place (``<dir>`` -> ``<dir>.old``,
``<dir>.tmp`` -> ``<dir>``, then deletes ``<dir>.old``). A crash before the
swap leaves ``<dir>`` as it was; a crash between the two renames leaves
``<dir>.old``, which ``load`` falls back to. All ranks must see the same
filesystem (a shared one across nodes).

Data parallelism: the replicas hold the same weights and optimizer state, so
replica 0 (dp rank 0) writes the checkpoint alone (its pipeline ranks' files,
the manifest saying its P and dp) and every replica loads it; the checkpoint
is the same as one saved without data parallelism and loads at any dp and P.
The RNG state is restored only when saved and loaded at the same P with
dp = 1 (replicas draw different random streams; only replica 0's is saved).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conveyor.errors import PipelineError
from conveyor.partition import resolve_balance, stage_ranges
from conveyor.runtime.execute.stages import layers_of

__all__ = ["CheckpointError", "layer_names", "save_pipeline", "load_pipeline", "export_state_dict",
           "read_manifest"]

FORMAT = "conveyor-checkpoint"
VERSION = 1


class CheckpointError(PipelineError):
    """A checkpoint is missing, incomplete, or does not fit this pipeline."""


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
        dist.barrier()  # the whole world: no replica reads before the files are in place


def _write_rank_file(path: Path, state: dict) -> None:
    """Write one rank's file; fsync so that the rename that publishes it cannot
    outrun the data."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save_pipeline(pipe, path, *, scheduler=None) -> Path:
    """Collective: every rank writes its part of the checkpoint at ``path``.

    In: a Pipeline, a directory path (the same on every rank, on a filesystem
    every rank sees), an optional LR scheduler whose state rank 0 stores.
    Out: the checkpoint directory. Raises CheckpointError if ``path`` exists
    and is not a conveyor checkpoint (it would be replaced).
    """
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    rank = pipe.ctx.rank
    if path.exists() and not (path / "manifest.json").exists():  # every rank sees it: all fail
        raise CheckpointError(f"{path} exists and is not a conveyor checkpoint; save into "
                              f"a new directory or remove it")
    optim = _sharded_optim(pipe)  # before replicas part: a sharded state is gathered
    if pipe.ctx.dp_rank != 0:  # replica 0 writes for all (same weights and state)
        _barrier(pipe)
        _barrier(pipe)
        return path
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed save
        tmp.mkdir(parents=True)
    _barrier(pipe)
    state = _rank_state(pipe, scheduler, optim)
    _write_rank_file(tmp / f"rank{rank}.pt", state)
    names = sorted(state["model"])
    gathered = [None] * pipe.ctx.world_size if rank == 0 else None
    if pipe.ctx.world_size > 1:
        dist.gather_object(names, gathered, group=pipe.ctx.pp_group, group_dst=0)
    else:
        gathered = [names]
    if rank == 0:
        manifest = {"format": FORMAT, "version": VERSION, "P": pipe.ctx.world_size,
                    "dp": pipe.ctx.dp_size,
                    "S": pipe.schedule.S, "step": pipe.steps,
                    "portable": pipe.layer_names is not None,
                    "files": {f"rank{r}.pt": n for r, n in enumerate(gathered)}}
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(pipe)  # nobody reads the checkpoint before it is in place
    return path


# -- load -----------------------------------------------------------------------------

def resolve(path) -> Path:
    """The checkpoint directory to read: ``path``, or ``path.old`` left by a
    save that crashed between its two renames. Raises CheckpointError."""
    path = Path(path)
    for cand in (path, path.with_name(path.name + ".old")):
        if (cand / "manifest.json").is_file():
            return cand
    raise CheckpointError(f"no checkpoint at {path} (no manifest.json); give the directory "
                          f"that Pipeline.save wrote")


def read_manifest(path) -> dict:
    """The manifest of the checkpoint at ``path``. Raises CheckpointError."""
    d = resolve(path)
    with open(d / "manifest.json") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(f"{d} is format {manifest.get('format')!r} version "
                              f"{manifest.get('version')!r}; this conveyor reads {FORMAT!r} "
                              f"version {VERSION}")
    return manifest


def _read(d: Path, name: str) -> dict:
    return torch.load(d / name, map_location="cpu", weights_only=True)


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
    files = {f: _read(d, f) for f in _files_for(manifest, wanted)}
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
    rng_restored = (manifest["P"] == pipe.ctx.world_size and pipe.ctx.dp_size == 1
                    and manifest.get("dp", 1) == 1)
    if rng_restored:
        own = files.get(f"rank{pipe.ctx.rank}.pt") or _read(d, f"rank{pipe.ctx.rank}.pt")
        torch.set_rng_state(own["rng"]["cpu"])
        if "cuda" in own["rng"] and pipe.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(own["rng"]["cuda"], pipe.ctx.device)
    if scheduler is not None:
        sched_state = (files.get("rank0.pt") or _read(d, "rank0.pt")).get("scheduler")
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
        out.update(_read(d, f)["model"])
    return out
