"""Activation checkpointing, balance="time" and plan= through the real runtime:
one launch of 2 processes (gloo) runs every configuration; each is compared
with the unsplit model in float64, and the activation bytes each rank held
with what the profile predicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.plan import plan_to_dict, rank_memory, search, stage_costs
from conveyor.runtime import launch
from conveyor.runtime.execute.recompute import resolve_checkpoint
from conveyor.measure.profile import profile
from conveyor.schedule import build_schedule
from tests.runtime import _models
from tests.runtime._plan_jobs import planned_job
from tests.runtime.test_exactness import split_backward_1f1b

DEPTH, BATCH = 4, 10          # 9 layers; micro-batches of 4, 3, 3 at M=3
SPLIT_CASES = [("zb-h1", [4, 5]), ("zbv", [2, 2, 2, 3])]


@pytest.fixture(scope="module")
def prof():
    torch.set_num_threads(1)
    return profile(_models.mlp(DEPTH), _models.batch(8)[0], repeats=1, warmup=1,
                   progress=False)


@pytest.fixture(scope="module")
def runs(prof, tmp_path_factory):
    path = tmp_path_factory.mktemp("prof") / "prof.json"
    prof.save(path)
    plan = plan_to_dict(search(prof, P=2, batch_size=BATCH, schedules=["gpipe", "1f1b"],
                               microbatches=[3, 5]).best, prof, batch_size=BATCH, budget=None)
    plan["checkpoint"] = [True, False]  # a per-stage choice, as the planner may write
    base = {"depth": DEPTH, "batch": BATCH, "microbatches": 3, "balance": [4, 5]}
    cfgs = [dict(base, id=f"{s}-{c}", schedule=s, checkpoint=c)
            for s in ("gpipe", "1f1b") for c in ("none", "full")]
    cfgs.append(dict(base, id="1f1b-stage0", schedule="1f1b", checkpoint=[True, False]))
    # split backward (I then W, as zero-bubble schedules run it) on recomputed stages
    split = {k: v for k, v in base.items() if k != "microbatches"}
    cfgs.append(dict(split, id="split-full", schedule=split_backward_1f1b(2, 3),
                     checkpoint="full"))
    cfgs.append({"id": "time", "depth": DEPTH, "batch": BATCH, "schedule": "1f1b",
                 "microbatches": 3, "balance": "time", "profile": str(path)})
    cfgs.append({"id": "plan", "depth": DEPTH, "batch": BATCH, "plan": plan})
    # split backward schedules: what I keeps for W is in the counter and the model
    for name, bal in SPLIT_CASES:
        cfgs.append(dict(base, id=name, schedule=name, balance=bal))
    rows = launch(planned_job, nprocs=2, args=(cfgs,))
    return {(row["id"], row["rank"]): row for rank_rows in rows for row in rank_rows}, plan


def test_gradients_stay_exact_with_checkpointing(runs):
    rows, _ = runs
    for (cid, rank), row in rows.items():
        assert row["loss_err"] < 1e-10 and row["grad_err"] < 1e-10, (cid, rank, row)
    assert rows[("1f1b-full", 0)]["checkpointed"] == {0: True}
    assert rows[("1f1b-stage0", 1)]["checkpointed"] == {1: False}
    assert rows[("split-full", 0)]["checkpointed"] == {0: True}
    assert rows[("split-full", 0)]["schedule"] == "1f1b-split"


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_memory_falls_by_what_the_profile_predicts(runs, prof, schedule):
    """The counter matches the prediction exactly, with checkpointing or without:
    the model replays what the runtime holds (kept inputs and outputs, send
    buffers not yet let go, receives posted ahead)."""
    rows, _ = runs
    sched = build_schedule(schedule, 2, 3)
    sizes = [4, 3, 3]
    for ck in ("none", "full"):
        flags = resolve_checkpoint(ck, 2)
        want = rank_memory(sched, stage_costs(prof, [4, 5], sizes, flags), static=False,
                           recompute=False)
        got = [rows[(f"{schedule}-{ck}", r)]["peak_activation_bytes"] for r in range(2)]
        assert got == pytest.approx(want, rel=1e-12), (schedule, ck)
    none = rows[(f"{schedule}-none", 0)]["peak_activation_bytes"]
    full = rows[(f"{schedule}-full", 0)]["peak_activation_bytes"]
    # stage 0 drops at least one micro-batch's inner activations (its input,
    # output and transfer buffers stay)
    kept = [stage_costs(prof, [4, 5], sizes, resolve_checkpoint(ck, 2)).held_per_sample[0]
            for ck in ("none", "full")]
    assert none - full >= (kept[0] - kept[1]) * min(sizes) > 0


@pytest.mark.parametrize("schedule, balance", SPLIT_CASES)
def test_split_backward_memory_is_predicted_exactly(runs, prof, schedule, balance):
    """Zero-bubble schedules keep gradients from I until W: the model counts
    them (per layer, as the profile measured) and matches the counter."""
    rows, _ = runs
    sched = build_schedule(schedule, 2, 3)
    costs = stage_costs(prof, balance, [4, 3, 3], [False] * sched.S)
    want = rank_memory(sched, costs, static=False, recompute=False)
    got = [rows[(schedule, r)]["peak_activation_bytes"] for r in range(2)]
    assert got == pytest.approx(want, rel=1e-12)
    # and the kept gradients matter: without them the model falls short
    bare = rank_memory(sched, dataclasses.replace(costs, w_kept=()), static=False,
                       recompute=False)
    assert max(b - w for b, w in zip(got, bare)) > 0
    assert all(row["loss_err"] < 1e-10 and row["grad_err"] < 1e-10
               for (cid, _), row in rows.items() if cid == schedule)


def test_balance_time_and_plan_run(runs, prof):
    rows, plan = runs
    assert rows[("time", 0)]["loss_err"] < 1e-10
    assert rows[("plan", 0)]["M"] == plan["M"] and rows[("plan", 0)]["schedule"] == plan["name"]
    got = [rows[("plan", r)]["layers"] for r in range(2)]
    assert [n for g in got for n in g.values()] == plan["balance"]
    assert rows[("plan", 0)]["checkpointed"] == {0: True}


@pytest.mark.parametrize("option, message", [
    ("some", "checkpoint='some'; use 'none', 'full' or one True/False per stage"),
    ([True], r"must hold 2 True/False values"),
])
def test_bad_checkpoint_option(option, message):
    with pytest.raises(PipelineError, match=message):
        resolve_checkpoint(option, 2)


def test_inner_layers_that_keep_their_input_are_counted():
    """Emulated layers save their input, which is the previous layer's output:
    a stage of three keeps two inner activations besides its own input."""
    from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[EmulatedLayer(4, EmulatedTimes(0.0, 0.0)) for _ in range(3)])
    p = profile(model, torch.randn(4, 4), repeats=1, warmup=1, progress=False)
    assert [x.saves_input for x in p.layers] == [True] * 3
    assert [x.saved_bytes for x in p.layers] == [0, 0, 0]
    sc = stage_costs(p, [3], [1], [False])
    assert sc.held_per_sample == (3 * 16,)  # input + two inner activations, float32 x 4


@pytest.mark.parametrize("split", [False, True])
def test_emulated_backward_time_leaves_out_the_recompute(monkeypatch, split):
    """An emulated layer's backward clock starts after its saved tensors are
    unpacked, so a checkpointed stage's recompute adds its forward time (on a
    fake clock that moves only while an emulated layer sleeps)."""
    from torch import nn

    from conveyor.measure import emulated
    from conveyor.runtime.execute.recompute import CheckpointedStage
    from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes

    now = [0.0]
    monkeypatch.setattr(emulated.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(emulated, "_sleep_until", lambda t: now.__setitem__(0, max(now[0], t)))
    times = EmulatedTimes(forward=1.0, backward=2.0)
    stage = nn.Sequential(*[EmulatedLayer(4, times, split_backward=split) for _ in range(3)])
    for module, recompute in ((stage, 0.0), (CheckpointedStage(stage), 3.0)):
        x = torch.randn(2, 4, requires_grad=True)
        y = module(x)
        start = now[0]
        y.sum().backward()
        assert now[0] - start == pytest.approx(3 * 2.0 + recompute)


def test_profile_measures_what_a_split_backward_keeps_for_w():
    from torch import nn

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4))
    model = nn.Sequential(nn.Linear(3, 4), block, nn.Tanh())
    prof = profile(model, torch.randn(8, 3, dtype=torch.float32), repeats=1, warmup=1,
                   progress=False)
    lin, blk, act = prof.layers
    # a Linear keeps its output's gradient (the one it received), one W call
    assert (lin.w_out_bytes, lin.w_bytes, lin.w_calls) == (4 * 4, 0, 1)
    # the block also keeps the gradient at its inner Linear's output (6 floats)
    assert (blk.w_out_bytes, blk.w_bytes, blk.w_calls) == (4 * 4, 6 * 4, 2)
    # no weights, nothing kept
    assert (act.w_out_bytes, act.w_bytes, act.w_calls) == (0, 0, 0)
