"""The optimizer state sharded over data-parallel replicas (ZeRO-1), on real
processes (gloo): dp 2 x pp 2 with Adam in float64, against the unsplit model
on the global batch and against the same pipeline unsharded.

One launch of 4 processes trains every configuration twice (sharded and
not) and saves one sharded checkpoint; one launch of 2 loads it at dp 1 x
pp 2 (unsharded) and dp 2 x pp 1 (sharded) and trains on.
"""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.runtime import Pipeline, PipelineConfig, launch
from tests.runtime import _models, _shard_jobs

pytestmark = pytest.mark.runtime

CONFIGS = [
    {"id": "mlp-1f1b", "model": "mlp", "schedule": "1f1b"},
    {"id": "mlp-vhalf", "model": "mlp", "schedule": "v-half"},
    # the embedding and the tied head on ranks 0 and 1 (a tie across ranks) ...
    {"id": "tied-1f1b", "model": "tied", "schedule": "1f1b"},
    # ... and on rank 0 alone, two stages of one rank (the V)
    {"id": "tied-zbv", "model": "tied", "schedule": "zbv"},
    # an odd batch (replicas of 5 and 4 rows), clipping and two calls per update
    {"id": "clip-accumulate", "model": "mlp", "schedule": "zb-h1", "B": 9, "clip": 0.05,
     "accumulate": 2, "steps": 4},
    {"id": "after", "model": "mlp", "schedule": "1f1b", "overlap": False},
]
# float64 throughout. Against the unsplit model the gradients are summed in
# another order (per micro-batch, then over replicas and ties), so they agree
# to rounding, and Adam divides by sqrt(v) ~ |g|, which keeps a relative
# rounding error relative: 1e-9 on the weights after a few steps is ample.
TOL = 1e-9


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    cfgs = [dict(c) for c in CONFIGS]
    cfgs[0]["save"] = str(root / "sharded")
    rows = launch(_shard_jobs.train_job, nprocs=4, args=(cfgs,))
    by_id = {c["id"]: [r[i] for r in rows] for i, c in enumerate(CONFIGS)}
    resumed = launch(_shard_jobs.resume_job, nprocs=2,
                     args=(str(root / "sharded"), CONFIGS[0], [(1, False), (2, True)]))
    return by_id, resumed


def _err(got: dict, want: dict) -> float:
    return max((torch.tensor(v, dtype=torch.float64) - want[n]).abs().max().item()
               for n, v in got.items())


@pytest.mark.parametrize("cid", [c["id"] for c in CONFIGS])
def test_sharded_equals_the_unsplit_model_and_the_unsharded_pipeline(runs, cid):
    cfg = next(c for c in CONFIGS if c["id"] == cid)
    ref = _shard_jobs.reference(cfg, cfg.get("B", 8), cfg.get("steps", 3))
    per_rank = runs[0][cid]
    assert [(r["dp_rank"], r["pp_rank"]) for r in per_rank] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in per_rank:
        for tag in ("plain", "sharded"):
            got = r[tag]
            assert max(abs(a - b) for a, b in zip(got["losses"], ref["losses"])) < TOL, (tag, r)
            assert _err(got["weights"], ref["weights"]) < TOL, (tag, cid)
        if cfg["model"] == "mlp":
            # no tie: both sum the same two replicas' numbers, so the weights are equal
            assert r["sharded"]["weights"] == r["plain"]["weights"], cid
            assert r["sharded"]["losses"] == r["plain"]["losses"], cid
        assert r["sharded"]["eval"] == pytest.approx(r["plain"]["eval"], rel=1e-12)
    # replicas hold the same whole weights after the all-gather
    for pp in range(2):
        a, b = (r["sharded"]["weights"] for r in per_rank if r["pp_rank"] == pp)
        assert a == b, (cid, pp)


def test_optimizer_state_bytes_fall_by_dp(runs):
    for cid, per_rank in runs[0].items():
        for r in per_rank:
            plain, sharded = r["plain"]["state_bytes"], r["sharded"]["state_bytes"]
            # Adam: two tensors the size of the parameters, plus a step counter
            # per parameter (8 bytes each, a float64 scalar here)
            assert plain >= 2 * r["plain"]["param_bytes"], (cid, r)
            # sharded: two slices of ceil(n / 2) elements per bucket and one
            # step per bucket: at most half, plus a padding element per bucket
            buckets = 4  # at most: a pipeline rank holds two stages and a tie here
            assert sharded <= plain / 2 + buckets * 3 * 8, (cid, plain, sharded)
            assert sharded >= r["plain"]["param_bytes"] - buckets * 2 * 8, (cid, sharded)


def test_the_reduce_scatter_overlaps_the_backward(runs):
    for r in runs[0]["mlp-1f1b"]:
        assert r["sharded"]["early"] == r["plain"]["early"] == [1, 1, 1]
        assert r["sharded"]["grads_in_buffer"]  # .grad are views of the scattered buffer
    for r in runs[0]["after"]:
        assert r["sharded"]["early"] == [0, 0, 0]


def test_a_sharded_checkpoint_resumes_at_another_dp_and_P(runs):
    _, resumed = runs
    ref = _shard_jobs.reference(CONFIGS[0], 8, 4)
    for key in ("dp1-plain", "dp2-sharded"):
        got = {n: v for r in resumed for n, v in r[key].items()}
        assert set(got) == set(ref["weights"]), key
        assert _err(got, ref["weights"]) < TOL, key


def test_sharding_with_one_replica_says_it_does_nothing():
    with pytest.raises(PipelineError, match=r"but dp=1: it would do nothing; run dp > 1"):
        Pipeline(_models.mlp(2), loss_fn=_models.loss_fn, optimizer=_shard_jobs.adam,
                 config=PipelineConfig(shard_optimizer=True))
    with pytest.raises(PipelineError, match=r"shard_optimizer='yes'; use True or False"):
        PipelineConfig(shard_optimizer="yes")
