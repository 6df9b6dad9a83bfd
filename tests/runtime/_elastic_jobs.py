"""The elastic training script's rank job (test_elastic.py, _elastic_script.py).

Trains the checkpoint tests' model (7-layer float64 MLP, Adam + StepLR, 1F1B,
M=4) on batches keyed by the step count, with a CheckpointPolicy(every=5,
keep=2), resuming from the newest checkpoint. On the first attempt
(restart_count() == 0), rank 1 SIGKILLs itself before step ``kill_at``; a
rank whose environment has CONVEYOR_TEST_NODE_DIES_AT=k SIGKILLs its parent
(the torchrun agent standing for its node) and itself before step k.
Rank 0 logs each step's loss to ``<dir>/steps.jsonl``; every rank writes its
pid to ``<dir>/pids/``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from conveyor.runtime import CheckpointPolicy, restart_count
from tests.runtime import _ckpt_jobs, _models

EVERY, KEEP = 5, 2


def elastic_job(ctx, out: str, steps: int, kill_at: int | None = None) -> dict:
    out = Path(out)
    attempt = restart_count()
    (out / "pids").mkdir(parents=True, exist_ok=True)
    (out / "pids" / f"a{attempt}-P{ctx.world_size}-r{ctx.rank}").write_text(str(os.getpid()))
    policy = CheckpointPolicy(out / "ckpt", every=EVERY, keep=KEEP)
    pipe, sched = _ckpt_jobs.build({"schedule": "1f1b"}, ctx)
    info = policy.resume(pipe, scheduler=sched)
    resumed_weights = _ckpt_jobs.weights(pipe) if info else None
    losses = {}
    node_dies_at = os.environ.get("CONVEYOR_TEST_NODE_DIES_AT")
    while pipe.steps < steps:
        k = pipe.steps
        if k == kill_at and attempt == 0 and ctx.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if node_dies_at is not None and k == int(node_dies_at) and attempt == 0:
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = _models.batch(_ckpt_jobs.BATCH, seed=k + 1)
        losses[k] = pipe.step(x, y).loss
        sched.step()
        if ctx.rank == 0:
            with open(out / "steps.jsonl", "a") as f:
                f.write(json.dumps({"attempt": attempt, "P": ctx.world_size, "step": k,
                                    "loss": losses[k]}) + "\n")
        policy.save_if_due(pipe, scheduler=sched)
    return {"attempt": attempt, "P": ctx.world_size, "resumed": info and info["step"],
            "saved_P": info and info["saved_P"], "resumed_weights": resumed_weights,
            "losses": losses, "weights": _ckpt_jobs.weights(pipe)}


def merged(results: list[dict]) -> dict:
    """The per-rank results of one run as one: weights of all ranks by name."""
    out = dict(results[0])
    for key in ("weights", "resumed_weights"):
        if results[0][key] is not None:
            out[key] = {k: v for r in results for k, v in r[key].items()}
    return out
