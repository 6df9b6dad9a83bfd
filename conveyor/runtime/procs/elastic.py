"""Elastic training: checkpoints every k steps, kept to a bounded number, and a
resume from the newest one when the processes restart.

    policy = CheckpointPolicy("ckpt", every=500, keep=2)

    def train(ctx):
        pipe = Pipeline(model(), ..., schedule="1f1b")   # P = this attempt's world size
        policy.resume(pipe, scheduler=sched)              # newest checkpoint, if any
        while pipe.steps < total:
            pipe.step(*batch(pipe.steps))                 # data keyed by the step count
            sched.step()
            policy.save_if_due(pipe, scheduler=sched)     # ckpt/step-00000500, ...

Restarts are the launcher's: ``torchrun --max-restarts N`` restarts the whole
group when a rank fails (with a new world size under ``--nnodes MIN:MAX``),
and so does ``launch(..., options=LaunchOptions(max_restarts=N))``. The same
script then builds its pipeline for the new world size (a schedule given by
name is built for P = world size) and ``resume`` loads the newest checkpoint,
which loads at any P (see checkpoint_io). ``restart_count()`` says which
attempt this is.

Layout: ``<dir>/step-XXXXXXXX`` (the step count, 8 digits or more), each an
ordinary checkpoint (``Pipeline.save``). After each save, rank 0 deletes all
but the newest ``keep`` (``ckptdir.remove``): each is un-published first (its
manifest renamed), so a crash mid-delete never leaves a half checkpoint that
looks whole; then only the files conveyor wrote are removed, and the folder
when conveyor made it and nothing else is in it. A save that crashed leaves
a folder without a manifest, which is never loaded; the next prune clears
what its journal names. Anything else in ``<dir>`` is left alone.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import PipelineError
from conveyor.runtime.checks import check_policy
from conveyor.runtime.procs import ckptdir

__all__ = ["CheckpointPolicy", "latest_checkpoint", "restart_count", "join_attempt_group",
           "with_restarts"]

_NAME = re.compile(r"^step-(\d{8,})$")


def restart_count() -> int:
    """Which attempt this process belongs to: 0 on the first, 1 after one
    restart, ... (torchrun's TORCHELASTIC_RESTART_COUNT, which the local
    launcher sets too)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def with_restarts(run, *, max_restarts: int, nprocs: int):
    """The local launcher's restarts: ``run(attempt)`` for attempt 0, 1, ...
    until one returns, at most ``max_restarts`` times again after a
    RankFailedError (``run`` reaps every rank of its attempt before it
    raises). A failure every rank met alike (a bad argument) would only
    repeat: it is raised at once, as is the last attempt's."""
    from conveyor.runtime.errors import RankFailedError

    attempt = 0
    while True:
        try:
            return run(attempt)
        except RankFailedError as e:
            if attempt == max_restarts or e.report.kind == "same":
                raise
            print(f"conveyor: attempt {attempt} failed: {e.report.summary}\nconveyor: "
                  f"restarting all {nprocs} ranks ({max_restarts - attempt} restart(s) left)",
                  file=sys.stderr)
            attempt += 1


def join_attempt_group(backend: str | None, timeout_s: float) -> bool:
    """Under torchrun with an agent store: join the process group through
    keys private to this attempt. Returns False (and does nothing) elsewhere.

    Why: torchrun's agent keeps one store (same MASTER_PORT) across restarts,
    and the process group's keys (each rank's gloo address) are the same in
    every attempt, so a rank of attempt 1 could read a dead rank's address
    left by attempt 0 and fail to connect ("Connection refused"). A prefix
    per attempt keeps attempts apart."""
    import torch.distributed as dist
    from datetime import timedelta

    from conveyor.runtime.transport.group import default_backend

    if dist.is_initialized() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return False
    world = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(
        backend or default_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world))),
        store=dist.PrefixStore(f"conveyor/attempt{restart_count()}/", store),
        rank=int(os.environ["RANK"]), world_size=world, timeout=timedelta(seconds=timeout_s))
    return True


def _complete(d: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``d`` (a ``step-X``
    folder with a manifest), oldest first."""
    if not d.is_dir():
        return []
    found = {}
    for child in d.iterdir():
        m = _NAME.match(child.name)
        if m and (child / ckptdir.MANIFEST).is_file():
            found[int(m.group(1))] = child
    return sorted(found.items())


def latest_checkpoint(directory) -> Path | None:
    """The newest complete checkpoint under ``directory`` (written by a
    CheckpointPolicy), or None when there is none (or no directory yet).
    Needs no process group."""
    found = _complete(Path(directory))
    return found[-1][1] if found else None


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where, how often and how many checkpoints a training script keeps.

    dir:   the directory holding ``step-XXXXXXXX`` checkpoints (created on the
           first save; every rank must see the same filesystem).
    every: save after every ``every``-th step (when ``pipe.steps``, which
           counts every step, evaluate and predict call, is a multiple of
           it), an integer >= 1; with ``PipelineConfig(accumulate=k)`` a
           multiple of k.
    keep:  how many of the newest checkpoints stay on disk, 1..1000 (default
           2: the newest may be cut short by a crash while the one before
           stays whole). Older ones are deleted after each save, so disk use
           is bounded whatever the run's length.

    Raises PipelineError for a bad value, naming it and the fix.
    """

    dir: str | os.PathLike
    every: int
    keep: int = 2

    def __post_init__(self) -> None:
        check_policy(self)

    def path(self, step: int) -> Path:
        return Path(self.dir) / f"step-{step:08d}"

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def resume(self, pipe, *, scheduler=None) -> dict | None:
        """Collective: load the newest checkpoint into ``pipe`` (and
        ``scheduler``), whatever P it was saved at. Rank 0 picks it and tells
        the others, so every rank loads the same one.

        Out: None when there is no checkpoint yet (a fresh start), else
        ``Pipeline.load``'s dict plus "path" and "P" (this run's P; when it
        differs from "saved_P" the stages were re-cut for the new P).
        Raises CheckpointError when the chosen checkpoint does not fit."""
        path = self.latest() if pipe.ctx.rank == 0 else None
        if pipe.ctx.world_size > 1:
            import torch.distributed as dist

            from conveyor.runtime.procs.deadline import bounded

            box = [None if path is None else str(path)]
            with bounded("the resume broadcast of the checkpoint path", None):
                dist.broadcast_object_list(box, src=0)
            path = None if box[0] is None else Path(box[0])
        if path is None:
            return None
        info = pipe.load(path, scheduler=scheduler)
        info.update(path=str(path), P=pipe.ctx.world_size)
        if pipe.ctx.rank == 0:
            moved = (f", saved at P={info['saved_P']}, re-cut for P={info['P']}"
                     if info["saved_P"] != info["P"] else "")
            print(f"conveyor: resumed from {path} (step {info['step']}{moved})",
                  file=sys.stderr)
        return info

    def save_if_due(self, pipe, *, scheduler=None) -> Path | None:
        """Collective: after a step, save ``dir/step-XXXXXXXX`` when
        ``pipe.steps`` is a multiple of ``every``, then (rank 0) delete all
        but the newest ``keep``. Returns the checkpoint path, or None when no
        save was due. Raises CheckpointError as ``Pipeline.save`` does, and
        PipelineError when ``every`` is not a multiple of the pipeline's
        ``accumulate`` (a save inside an accumulation window would lose the
        gradients gathered so far: they are not part of a checkpoint)."""
        k = pipe.config.accumulate
        if self.every % k:
            raise PipelineError(f"every={self.every} is not a multiple of accumulate={k}: a "
                                f"checkpoint inside an accumulation window would lose its "
                                f"partial gradients; use every={self.every + k - self.every % k}")
        if pipe.steps == 0 or pipe.steps % self.every:
            return None
        path = pipe.save(self.path(pipe.steps), scheduler=scheduler)
        if pipe.ctx.rank == 0:
            prune(Path(self.dir), self.keep)
        return path


def prune(d: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints in ``d``, and
    what crashed saves and deletes left in conveyor's ``step-X`` folders;
    only files conveyor wrote (see ``ckptdir.remove``). Call it only while no
    save is under way. Returns the checkpoints deleted."""
    complete = _complete(d)
    gone = [p for _, p in complete[:-keep]]
    for p in gone:
        ckptdir.remove(p)
    kept = {p for _, p in complete[-keep:]}
    for child in sorted(d.iterdir()) if d.is_dir() else []:
        if (_NAME.match(child.name) and child not in kept and child.is_dir()
                and not (child / ckptdir.MANIFEST).exists()):
            ckptdir.remove(child)  # a save or a delete that crashed; not ours: untouched
    return gone
