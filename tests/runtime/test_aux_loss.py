"""Auxiliary losses made on any stage (real processes, gloo, float64).

Every layer of a 5-layer chain adds a penalty on its output; at P = 2 the
layers sit on both ranks (4 stages under zbv). The pipelined step equals the
unsplit model's loss + penalties on the whole batch: the main loss, the
penalties' total and each by name, every gradient and every weight after 3
SGD steps, within 1e-10 (relative; micro-batches of 3, 3, 2, 2 round
differently from the batch of 10). Measured with the interpreter broken on
purpose: weighting the penalties by 1/M instead of the micro-batch's share
moved the gradients by 0.19 (relative), and leaving them unscaled under the
fixed loss scale of 1024 by 1.1. Side inputs reach the layers of a
Pipeline(nn.Sequential(...)), also through activation checkpointing."""

from __future__ import annotations

import pytest

from conveyor.runtime import LaunchOptions, RankFailedError, launch
from tests.runtime import _aux_jobs as J

pytestmark = pytest.mark.runtime
TOL = 1e-10
CASES = [{"id": "gpipe", "schedule": "gpipe"}, {"id": "1f1b", "schedule": "1f1b"},
         {"id": "zbv", "schedule": "zbv"},
         {"id": "1f1b-scaled", "schedule": "1f1b", "scale": 1024.0},
         {"id": "1f1b-recompute", "schedule": "1f1b", "checkpoint": "full"}]


@pytest.fixture(scope="module")
def rows():
    per_rank = launch(J.train_job, nprocs=2, args=(CASES,), options=LaunchOptions(threads=1))
    return {c["id"]: [r[i] for r in per_rank] for i, c in enumerate(CASES)}


@pytest.mark.parametrize("case", [c["id"] for c in CASES])
def test_aux_losses_train_as_the_unsplit_model(rows, case):
    names = set()
    for row in rows[case]:
        where = f"{case} rank {row['rank']}"
        assert row["loss_err"] <= TOL, where
        assert row["aux_err"] <= TOL, where
        assert row["grad_err"] <= TOL, where
        assert row["param_err"] <= TOL, where
        names |= set(row["names"])
        assert row["names"], where  # every rank made some
    assert names == {"a0", "a1", "a2", "a3"}
    # The total is the same on every rank (it rides on the loss's all-reduce).
    assert rows[case][0]["aux_loss"] == rows[case][1]["aux_loss"]


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_nan_auxiliary_loss_is_caught_by_the_guard(policy):
    if policy == "skip":
        got = launch(J.nan_job, nprocs=2, args=("skip",), options=LaunchOptions(threads=1))
        assert [r["skipped"] for r in got] == [[False, True, False]] * 2
        return
    with pytest.raises(RankFailedError) as e:
        launch(J.nan_job, nprocs=2, args=("raise",), options=LaunchOptions(threads=1))
    assert "rank 0 (stage 0): the auxiliary loss 'a0' is nan" in str(e.value)


def test_export_state_dict_names_every_pipelines_weights_as_the_model_does():
    """The whole state dict on pipeline rank 0 (None on rank 1), keyed as the
    cut model names it: the weights are the same tensors' values, so equal."""
    import torch

    from conveyor.models import GPT, GPTConfig
    from conveyor.runtime.execute.split import build_stage, chain_pieces

    per_rank = launch(J.export_job, nprocs=2, args=(None,), options=LaunchOptions(threads=1))
    got = per_rank[0]
    assert all(v is None for v in per_rank[1].values())
    want = J.model().state_dict()
    for kind in ("sequential", "renamed"):  # the unsplit names ("0.lin.weight", "4.bias")
        assert set(got[kind]) == set(want), kind
        assert all(torch.equal(got[kind][k], want[k]) for k in want), kind
    # Plain stages of from_stages have no model: their keys say the stage.
    assert {k.split(".", 1)[0] for k in got["plain"]} == {"stage0", "stage1"}
    assert torch.equal(got["plain"]["stage1.0.lin.weight"], want["3.lin.weight"])
    cfg = GPTConfig(vocab=11, context=8, layers=4, heads=2, width=8)
    torch.manual_seed(1)
    gpt = GPT(cfg).double().state_dict()
    assert set(got["gpt"]) == set(gpt)  # the tied head under its own name too
    assert all(torch.equal(got["gpt"][k], gpt[k]) for k in gpt)
    built = build_stage(lambda: GPT(cfg).double(), [n for n, _ in chain_pieces(GPT(cfg))],
                        seed=4).state_dict()
    assert set(got["gpt_built"]) == set(built)
    assert all(torch.equal(got["gpt_built"][k], built[k]) for k in built)


def test_add_aux_loss_needs_a_scalar_and_is_silent_unless_collected():
    import torch

    from conveyor.errors import PipelineError
    from conveyor.runtime import add_aux_loss, collect_aux

    add_aux_loss("free", torch.ones(3))  # nobody collects (a plain call): nothing happens
    with collect_aux() as terms:
        add_aux_loss("x", torch.tensor([2.0]))
        with pytest.raises(PipelineError, match=r"add_aux_loss\('y', \.\.\.\) got a tensor of "
                                                r"shape \(3,\); an auxiliary loss is a scalar"):
            add_aux_loss("y", torch.ones(3))
    assert [(n, v.item()) for n, v in terms] == [("x", 2.0)]
