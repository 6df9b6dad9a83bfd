"""Tied weights across ranks, token-mean losses over padded batches, and the
training loop (clipping, accumulation, LR schedule, hook, evaluate, predict),
on real processes against the unsplit model. One launch per P."""

from __future__ import annotations

import pytest
import torch

from conveyor.schedule import build_schedule
from conveyor.runtime.train.tied import TiedParameterError, find_shared, resolve_ties
from conveyor.runtime.execute.stages import split_model
from tests.models import _lm, _runs

pytestmark = pytest.mark.runtime
TOL = 1e-10


def grid(P: int) -> list[dict]:
    cfgs = [{"id": f"{name}-M{M}", "schedule": name, "M": M, "steps": 3}
            for name in ("gpipe", "1f1b", "zb-h1", "zbv") for M in (1, 2, 4)]
    cfgs += [
        # 6 steps: the tied copies must stay bit-identical over many updates.
        {"id": "long", "schedule": "1f1b", "M": 4, "steps": 6, "evaluate": True},
        {"id": "declared", "schedule": "1f1b", "M": 2, "steps": 3, "declared": True},
        {"id": "hook-clip", "schedule": "1f1b", "M": 4, "steps": 3, "hook_clip": 0.5},
        {"id": "config-clip-acc-lr", "schedule": "gpipe", "M": 2, "steps": 4,
         "max_grad_norm": 0.3, "accumulate": 2, "lr_schedule": True},
    ]
    return cfgs


def runs(P: int) -> dict:
    return {"cfgs": {c["id"]: c for c in grid(P)}, "rows": _runs.by_id(_runs.runs(P)["tied"])}


@pytest.mark.parametrize("P", [2, 4])
def test_tied_token_mean_training_matches_unsplit_model(P):
    run = runs(P)
    assert set(run["rows"]) == set(run["cfgs"])
    for cid, rows in run["rows"].items():
        for row in rows:
            where = f"{cid} rank {row['rank']}"
            assert row["loss_err"] <= TOL, where
            assert row["grad_err"] <= TOL, where
            assert row["param_err"] <= TOL, where
            assert row["checked"] > 0, where
        # The tie spans the ranks of the first and the last stage (under a V
        # both are rank 0, which holds the one copy); the copies end equal,
        # bit for bit, after every update.
        cfg = run["cfgs"][cid]
        place = build_schedule(cfg["schedule"], P, cfg["M"]).placement
        ends = sorted({place[0], place[-1]})
        owners = [r for r in rows if r["tied"]]
        assert [r["rank"] for r in owners] == ends, cid
        if len(owners) > 1:
            (name,) = owners[0]["tied"]
            assert owners[0]["tied"][name] == owners[1]["tied"][name], cid


@pytest.mark.parametrize("P", [2, 4])
def test_global_clipping_scheduler_accumulation_and_evaluate(P):
    rows = runs(P)["rows"]
    for row in rows["hook-clip"]:
        assert row["norms"] == 3 and row["norm_err"] < 1e-12  # the hook ran, same norm
    for row in rows["config-clip-acc-lr"]:
        assert row["lr"] == pytest.approx(0.1 * 0.5)  # 2 updates, StepLR(2, 0.5)
    for row in rows["long"]:
        assert row["eval_err"] < 1e-12 and not row["eval_moved"]


@pytest.mark.parametrize("P", [2, 4])
def test_predict_on_every_schedule(P):
    per_rank = _runs.runs(P)["predict"]
    names = {row["schedule"] for row in per_rank[0]}
    ran = {row["schedule"] for row in per_rank[0] if not row["skipped"]}
    assert {"gpipe", "1f1b"} <= ran <= names
    for name in ran:
        # the output comes back on the rank of the last stage only (rank 0 under a V)
        rows = [row for rows in per_rank for row in rows if row["schedule"] == name]
        with_output = [row for row in rows if row["equal"] is not None]
        assert len(with_output) == 1, name
        assert with_output[0]["err"] < 1e-12, name


def test_untied_share_is_an_error_and_names_it():
    stages = split_model(_lm.tied_lm(), 2)
    shared = find_shared(stages)
    assert shared == [((0, "0.emb.weight"), (1, "3.weight"))]
    with pytest.raises(TiedParameterError, match=r"stage 0 \(0.emb.weight\) on rank 0.*tied=None"):
        resolve_ties(S=2, placement=(0, 1), local={0: stages[0]}, shared=shared, allow=False)
    # On one rank autograd sums the two uses itself: no error, no group.
    (tie,) = resolve_ties(S=2, placement=(0, 0), local=dict(enumerate(stages)), shared=shared,
                          allow=False)
    assert tie.ranks == (0,)


def test_declared_ties_are_checked():
    stages = split_model(_lm.tied_lm(), 2)
    local = dict(enumerate(stages))
    with pytest.raises(TiedParameterError, match="stage 1 has no parameter 'nope'"):
        resolve_ties(S=2, placement=(0, 1), local=local, declared=[["0.0.emb.weight", "1.nope"]])
    with pytest.raises(TiedParameterError, match="different shapes"):
        resolve_ties(S=2, placement=(0, 0), local=local, declared=[["0.0.emb.weight",
                                                                     "0.1.weight"]])
    with pytest.raises(TiedParameterError, match="'<stage>.<name in the stage>'"):
        resolve_ties(S=2, placement=(0, 1), local=local, declared=[["emb.weight", "1.3.weight"]])
    with pytest.raises(TiedParameterError, match="at least two"):
        resolve_ties(S=2, placement=(0, 1), local=local, declared=["0.0.emb.weight"])


@pytest.mark.parametrize("P", [2, 4])
def test_a_tie_built_on_each_rank_must_be_declared(P):
    rows = _runs.runs(P)["undeclared"]
    for row in rows:  # the same verdict on every rank
        assert row["undeclared"] is not None
        assert "'0.0.emb.weight' (rank 0)" in row["undeclared"]
        assert f"(rank {P - 1}) hold identical values" in row["undeclared"]
        assert row["opt_out"] == 0 and row["declared"] == 1
