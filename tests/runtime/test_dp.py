"""Data parallel x pipeline parallel on real processes (gloo): dp replicas of a
pipeline train exactly as the unsplit model on the global batch.

One launch of 4 processes (dp 2 x pp 2) runs every configuration; one of 2
processes loads the dp2 x pp2 checkpoint at dp1 x pp2 and dp2 x pp1; the
single-process pipeline (dp1 x pp1) runs in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.runtime.train.dataparallel import replica_rows
from tests.runtime import _dp_jobs, _models
from tests.runtime._procs import why_failed

pytestmark = pytest.mark.runtime
ROOT = Path(__file__).resolve().parents[2]

CONFIGS = [
    {"id": "1f1b-overlap", "model": "mlp", "schedule": "1f1b", "overlap": True},
    {"id": "1f1b-after", "model": "mlp", "schedule": "1f1b", "overlap": False},
    {"id": "zbh1-overlap", "model": "mlp", "schedule": "zb-h1", "overlap": True, "M": 4},
    {"id": "zbh1-after", "model": "mlp", "schedule": "zb-h1", "overlap": False, "M": 4},
    # an odd batch: replicas take 6 and 5 rows; clipping on the pipeline's norm
    {"id": "uneven-clip", "model": "mlp", "schedule": "1f1b", "B": 11, "clip": 0.05},
    {"id": "tied-1f1b", "model": "tied", "schedule": "1f1b", "overlap": True},
    {"id": "tied-zbh1", "model": "tied", "schedule": "zb-h1", "overlap": True, "M": 4},
    # the V puts the embedding and the tied head on rank 0: one parameter, two local stages
    {"id": "tied-zbv", "model": "tied", "schedule": "zbv", "overlap": True, "M": 4},
    # two calls per update: the replicas' sum waits for the window's last backward;
    # the pipeline and data-parallel groups made by the caller (mesh.from_groups)
    {"id": "accumulate", "model": "mlp", "schedule": "1f1b", "accumulate": 2, "steps": 4,
     "groups": True},
    # torch's DeviceMesh instead of dp=; recorded steps gather each replica's timeline
    {"id": "mesh-record", "model": "mlp", "schedule": "1f1b", "mesh": True, "record": True},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    # dp1 x pp1, in this process: train, save; the launch loads it at dp2 x pp2.
    single = _dp_jobs.exact_job(None, [{"id": "single", "model": "mlp", "schedule": "1f1b",
                                        "dp": 1, "save": str(root / "p1")}])
    cfgs = [{**c, "dp": 2} for c in CONFIGS]
    cfgs[0]["save"] = str(root / "dp2")
    cfgs[1]["load"] = str(root / "p1")
    ranks = launch(_dp_jobs.exact_job, nprocs=4, args=(cfgs,))
    return root, single[0], ranks


def by_id(ranks):
    return {c["id"]: [r[i] for r in ranks] for i, c in enumerate(CONFIGS)}


@pytest.mark.parametrize("cid", [c["id"] for c in CONFIGS])
def test_dp2_pp2_equals_the_unsplit_model_on_the_global_batch(runs, cid):
    per_rank = by_id(runs[2])[cid]
    assert [(r["dp_rank"], r["pp_rank"]) for r in per_rank] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in per_rank:
        assert r["n_params"] > 0
        assert r["loss_err"] < 1e-10, r
        assert r["grad_err"] < 1e-10, r  # after the dp sum (and the tie sum), before the step
        assert r["weight_err"] < 1e-10, r  # after the optimizer steps
        assert r["eval_err"] < 1e-10, r  # evaluate: the global batch's loss too
    cfg = next(c for c in CONFIGS if c["id"] == cid)
    steps = cfg.get("steps", 2)
    assert all(r["updates"] == steps // cfg.get("accumulate", 1) for r in per_rank)


def test_recorded_steps_give_each_replica_its_own_timeline_and_the_watch_global_ranks(runs):
    per_rank = by_id(runs[2])["mesh-record"]
    # pipeline rank 0 of each replica gathers its pipeline's two ranks
    assert [r["timelines"] for r in per_rank] == [[[0, 1]] * 2, [], [[0, 1]] * 2, []]
    assert [r["watch_rank"] for r in per_rank] == [0, 1, 2, 3]  # no two replicas share a key


def test_every_rank_returns_the_global_loss(runs):
    for cid, per_rank in by_id(runs[2]).items():
        losses = [r["losses"] for r in per_rank]
        assert all(ls == losses[0] for ls in losses), cid  # bit-equal on all 4 ranks


def test_overlap_starts_every_bucket_during_the_backward_and_after_does_not(runs):
    got = by_id(runs[2])
    for cid in ("1f1b-overlap", "zbh1-overlap", "tied-zbh1"):
        assert all(r["early"] == [r["local_stages"]] * 2 for r in got[cid]), cid
    # the tie shared by two stages of rank 0 joins one bucket, so one fewer
    assert [r["early"] for r in got["tied-zbv"]] == [[1, 1], [2, 2], [1, 1], [2, 2]]
    for cid in ("1f1b-after", "zbh1-after"):
        assert all(r["early"] == [0, 0] for r in got[cid]), cid


def test_checkpoints_move_between_dp2_pp2_dp1_pp2_dp2_pp1_and_dp1_pp1(runs):
    root, single, ranks = runs
    # saved at dp1 x pp1, loaded at dp2 x pp2: every replica holds those weights
    for r in ranks:
        loaded = r[1]["loaded"]
        assert loaded and all(single["saved"][k] == v for k, v in loaded.items())
    # saved at dp2 x pp2 by replica 0; both replicas hold the same weights
    saved = [{k: v for r in ranks[2 * d:2 * d + 2] for k, v in r[0]["saved"].items()}
             for d in range(2)]
    assert saved[0] == saved[1] and saved[0] != single["saved"]
    at_dp1_pp1 = _dp_jobs.exact_job(None, [{"id": "p1", "model": "mlp", "schedule": "1f1b",
                                            "dp": 1, "steps": 0,
                                            "load": str(root / "dp2")}])[0]["loaded"]
    two = launch(_dp_jobs.load_job, nprocs=2, args=(str(root / "dp2"), [1, 2]))
    at_dp1_pp2 = {k: v for r in two for k, v in r[1].items()}
    assert at_dp1_pp1 == at_dp1_pp2 == saved[0]
    assert two[0][2] == two[1][2] == saved[0]  # dp2 x pp1: each replica the whole model


def test_replica_rows_cover_the_batch_larger_first():
    assert [replica_rows(10, 4, d) for d in range(4)] == [
        slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert [replica_rows(8, 2, d) for d in range(2)] == [slice(0, 4), slice(4, 8)]


def test_dp_that_does_not_divide_the_world_names_the_value_and_the_fix():
    model = _models.mlp(2)
    with pytest.raises(PipelineError, match=r"dp=2 does not divide the world size 1.*dp in \[1\]"):
        Pipeline(model, loss_fn=_models.loss_fn, optimizer=None, dp=2)
    with pytest.raises(PipelineError, match=r"dp=0; use a positive integer"):
        Pipeline(model, loss_fn=_models.loss_fn, optimizer=None, dp=0)
    with pytest.raises(PipelineError, match=r"dp_overlap='yes'; use True or False"):
        PipelineConfig(dp_overlap="yes")


def test_dp2_pp2_under_torchrun_is_exact(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "4", str(ROOT / "tests" / "runtime" / "_dp_torchrun.py"), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, why_failed(done.stdout + done.stderr)
    ranks = [r[0] for r in json.loads(out.read_text())]
    assert [(r["dp_rank"], r["pp_rank"]) for r in ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["loss_err"] < 1e-10 and r["grad_err"] < 1e-10 and r["weight_err"] < 1e-10
               for r in ranks), ranks
    assert len({tuple(r["losses"]) for r in ranks}) == 1
    assert {r["launcher"] for r in ranks} == {"torchrun"}
