"""``PipelineConfig(compile=...)``: compiled stages train as uncompiled ones.

One launch (P=2) runs every case: each registered schedule with compile off
and on, for an MLP and a stack of transformer blocks (float64, 3 SGD steps
with momentum), activation checkpointing, bf16, varying sequence lengths,
the Hugging Face adapter; and counts the split backward's work. Compiling
costs seconds per graph on CPU, so the cases share compiled graphs: the
transformer stack has one block per stage (S blocks), so every stage of it
is the same graph, with or without an input gradient.
"""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.runtime import PipelineConfig, RankFailedError, launch
from conveyor.schedule import build_schedule, schedule_names
from tests.runtime import _compile_jobs

pytestmark = pytest.mark.runtime

# Compiled and eager float64 differ only in the order inductor sums in
# (vectorised reductions): about 1e-16 per operation, 1e-15 after 3 steps.
TOL = 1e-10


def _plan() -> dict:
    cases = []
    for model in ("mlp", "blocks"):
        for name in schedule_names():
            M = 1 if name == "naive" else 4
            S = build_schedule(name, 2, M).S
            # Micro-batches of 2 everywhere: one static shape for every case.
            cases.append({"id": f"{model}-{name}", "model": model, "schedule": name, "M": M,
                          "batch": 2 * M, "blocks": S})
    cases += [
        {"id": "mlp-zbv-checkpoint", "model": "mlp", "schedule": "zbv", "M": 4, "batch": 8,
         "checkpoint": "full"},
        # sizes 3, 3, 2, 2 in a step, lengths changing between steps
        {"id": "mlp-seq-zb-h1-varying", "model": "mlp-seq", "schedule": "zb-h1", "M": 4,
         "batch": 10, "lengths": [5, 7, 9, 6], "config": {"varying_shapes": True}},
        # a new structure (depth 3), whose backward the test refuses to split
        {"id": "mlp-zb-h1-fallback", "model": "mlp", "depth": 3, "schedule": "zb-h1", "M": 4,
         "batch": 8, "refuse_split": True},
        {"id": "mlp-zb-h1-bf16", "model": "mlp", "schedule": "zb-h1", "M": 4, "batch": 8,
         "config": {"precision": "bf16"}, "reference": True},
    ]
    return {"matrix": cases, "hf": {"schedule": "zb-h1", "M": 2, "lengths": [8, 6, 7]}}


_RUN: dict = {}


@pytest.fixture(scope="module")
def run():
    if not _RUN:
        per_rank = launch(_compile_jobs.suite_job, nprocs=2, args=(_plan(),))
        _RUN["ranks"] = per_rank
        _RUN["matrix"] = {}
        for rows in per_rank:
            for row in rows["matrix"]:
                _RUN["matrix"].setdefault(row["id"], []).append(row)
    return _RUN


def test_every_schedule_trains_as_without_compile(run):
    ids = [f"{m}-{n}" for m in ("mlp", "blocks") for n in schedule_names()]
    for cid in ids + ["mlp-zbv-checkpoint", "mlp-seq-zb-h1-varying"]:
        rows = run["matrix"][cid]
        assert len(rows) == 2, cid
        for row in rows:
            assert row["loss_err"] <= TOL and row["param_err"] <= TOL, (cid, row)
            assert not row["fallbacks"] and not row["warnings"], (cid, row["fallbacks"])


def test_i_runs_input_gradients_only_and_w_the_rest(run):
    """Where the schedule says I, the compiled backward ran its dI part only,
    and each such call was followed by exactly one W on the same graph; a
    full B ran only for B actions and for stage 0 (no input gradient: its
    W is its whole backward, as without compile)."""
    for cid, rows in run["matrix"].items():
        if cid.endswith(("-bf16", "-fallback")):
            continue
        for row in rows:
            runs, kinds = row["runs"], set(row["kinds"])
            assert runs["I"] == runs["W"], (cid, row["rank"], runs)
            if "I" in kinds and row["rank"] == 1 and "B" not in kinds:
                assert runs["B"] == 0 and runs["I"] > 0, (cid, runs)
            if "I" not in kinds:
                assert runs["I"] == 0, (cid, runs)


def test_split_parts_add_up_to_the_backward(run):
    for rows in run["ranks"]:
        count = rows["count"]
        # matmuls: I + W is B; I touched no weight; each part ran once
        assert count["mm_b"] > 0 and count["mm_i"] + count["mm_w"] == count["mm_b"], count
        assert count["mm_w"] > 0 and count["untouched_after_i"]
        assert count["runs"] == {"I": 1, "W": 1, "B": 0}
        assert count["gin_err"] <= TOL and count["w_err"] <= TOL
        for row in rows["matrix"]:  # every graph compiled: its nodes split, none twice
            for c in row["counts"]:
                assert c["dI"] + c["dW"] == c["backward"], c


def test_one_compile_per_shape_class(run):
    """Steps after the first compile nothing: fixed shapes (the cases above,
    each stage one graph, or none when an earlier case compiled the same
    structure), and lengths that change between and within steps
    (varying_shapes: dynamic shapes from the start)."""
    for rows in run["matrix"].values():
        for row in rows:
            assert all(s["graphs"] == 0 for s in row["stats"][1:]), (row["id"], row["stats"])
            assert all(n <= 1 for n in row["graphs"].values()), (row["id"], row["graphs"])
    varying = run["matrix"]["mlp-seq-zb-h1-varying"]
    assert all(sum(r["graphs"].values()) == 1 for r in varying), varying
    for row in run["matrix"]["mlp-naive"]:  # the first case: compile time is reported
        assert row["stats"][0]["graphs"] == 1 and row["stats"][0]["compile_s"] > 0


def test_bf16_compiled_as_close_to_fp64_as_eager(run):
    # bf16 keeps 8 bits of mantissa (relative rounding 2**-9 = 2e-3): after 3
    # steps both runs are within 1e-2 of the float64 model, and of each other.
    # The float32 run without autocast is within 1e-5: a larger error shows
    # that the policy's autocast reached the compiled graphs.
    for row in run["matrix"]["mlp-zb-h1-bf16"]:
        assert row["ref_err_fp32"] < 1e-5 < row["ref_err_on"] < 1e-2, row
        assert 1e-5 < row["ref_err_off"] < 1e-2, row
        assert row["param_err"] < 1e-2, row


def test_a_graph_that_cannot_be_split_runs_uncompiled_with_one_warning(run):
    for row in run["matrix"]["mlp-zb-h1-fallback"]:
        s = row["rank"]
        assert len(row["warnings"]) == 1, row["warnings"]
        assert f"rank {s} stage {s} (SequentialStage(" in row["warnings"][0]
        assert "runs uncompiled" in row["warnings"][0] and "refused by the test" in row["warnings"][0]
        assert row["fallbacks"] == row["warnings"]
        assert row["runs"] == {"I": 0, "W": 0, "B": 0}  # no compiled backward ran
        assert row["loss_err"] <= TOL and row["param_err"] <= TOL  # eager splitgrad did the work


def test_hand_compiled_stage_under_split_schedule_warns():
    from conveyor.runtime import Pipeline
    from conveyor.runtime.execute.compiled import CompileFallback
    from tests.runtime import _models
    from tests.runtime.test_split_backward import split_on_one_rank

    model = _models.mlp(2)
    model[0] = torch.compile(model[0])  # compiled by hand, never called here
    with pytest.warns(CompileFallback, match=r"rank 0 stage 0 \(SequentialStage\(OptimizedModule.*"
                                             r"compiled by hand.*twice the backward"):
        Pipeline(model, loss_fn=_models.loss_fn, optimizer=None,
                 schedule=split_on_one_rank(2))


def test_hugging_face_adapter_compiles(run):
    for rows in run["ranks"]:
        hf = rows["hf"]
        assert hf["loss_err"] <= 1e-9 and hf["param_err"] <= 1e-9, hf
        assert hf["graphs"][0] > 0 and hf["graphs"][1:] == [0, 0], hf  # new lengths: no compile
        assert not hf["fallbacks"]


def test_profile_times_compiled_layers(run):
    prof = run["ranks"][0]["profile"]
    assert prof["meta"]["compile"] is True
    assert prof["kinds"] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]  # the model's layers
    # its I and W timings ran the compiled split backward (and its bytes kept
    # for W were measured after an I alone: more I than W)
    assert prof["runs"]["W"] > 0 and prof["runs"]["I"] >= prof["runs"]["W"], prof["runs"]
    linear = [k for k, kind in enumerate(prof["kinds"]) if kind == "Linear"][1:]  # not the first
    assert all(prof["w_bytes"][k] > 0 and prof["weight_grad"][k] > 0 for k in linear), prof


def test_recompile_limit_is_announced_not_silent(run):
    limit = run["ranks"][1]["limit"]
    assert limit["graphs"] == 1 and len(limit["warnings"]) == 1, limit
    assert limit["warnings"][0].startswith("conveyor compile: rank 1 stage 0 (Sequential(Linear")
    assert "recompile limit (1 graphs)" in limit["warnings"][0]
    assert limit["fallbacks"] == limit["warnings"] and limit["err"] <= 1e-12


def test_a_long_compile_is_not_a_hang(run):
    """Rank 0 waited longer than its first-step timeout (6 s) on rank 1,
    which was compiling for over 12 s: no hang report, both steps done."""
    slow0, slow1 = (rows["slow"] for rows in run["ranks"])
    assert slow0["watched"] and slow1["watched"]  # under the hang watch
    assert slow1["compile_s"] >= 12 and slow0["wall_s"] >= 12, (slow0, slow1)
    assert slow0["losses"] == slow1["losses"]


def test_bad_compile_option_names_it():
    with pytest.raises(PipelineError, match="'bogus'") as e:
        PipelineConfig(compile={"bogus": 1})
    assert e.value.same_on_every_rank
    with pytest.raises(PipelineError, match="'max_autotune'.*bool"):
        PipelineConfig(compile={"max_autotune": "yes"})
    with pytest.raises(PipelineError, match="compile='fast'"):
        PipelineConfig(compile="fast")
    assert PipelineConfig(compile={"max_autotune": False}).compile == {"max_autotune": False}


def test_compile_failure_on_one_rank_stops_every_rank():
    """Rank 1's stage fails to compile (an inductor switch that raises inside
    the compiler); its eager forward works, so the error names the stage's
    module as a compile failure, and rank 0, waiting for rank 1's
    gradient, ends too instead of hanging."""
    with pytest.raises(RankFailedError) as e:
        launch(_compile_jobs.failing_job, nprocs=2)
    text = str(e.value)
    assert "rank 1 stage 1 (SequentialStage(Tanh, Linear" in text and "failed to compile" in text
    assert e.value.rank == 1


def test_bad_option_is_reported_once_before_any_step():
    with pytest.raises(RankFailedError) as e:
        launch(_compile_jobs.bad_option_job, nprocs=2)
    assert e.value.report.kind == "same" and str(e.value).count("'bogus'") == 1
