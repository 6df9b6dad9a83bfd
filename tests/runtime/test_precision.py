"""Mixed precision across stages (gloo, real processes).

bf16: a pipelined run equals the same model run in one process under the
same policy, on the same micro-batches, with what crosses each cut between
ranks rounded to the boundary dtype. fp16: one loss scale for every rank and
replica, an overflow on one stage skipped by all. The guard: a NaN anywhere
stops or skips every rank. forward_backward: final gradients.

Tolerances. The reference and the ranks run the same operations at the same
shapes, on one thread each (LaunchOptions(threads=1) here), so they agree
bit for bit on this machine; the tests allow 1e-6 relative, room for a CPU
whose kernels round differently by thread count or call order, and far below
what a wrong cast does: dropping the cut's rounding moves the weights by
1.4e-2 (relative, after 20 Adam steps) and the losses by 1.5e-4, and bf16
against fp32 differs as much (measured with the reference alone).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.runtime import LaunchOptions, Pipeline, PipelineConfig, RankFailedError, launch
from conveyor.runtime.train.amp import LossScale
from tests.runtime import _guard_jobs, _precision_jobs as J
from tests.runtime._models import rel_err

pytestmark = pytest.mark.runtime
TOL = 1e-6
ONE_THREAD = LaunchOptions(threads=1)
CASES = [
    # (schedule, precision, boundary, steps): 50 steps for the loss curve
    ("1f1b", "bf16", None, 50),
    ("1f1b", "bf16", "fp32", 10),
    ("zb-h1", "bf16", None, 10),
    ("zbv", "bf16", None, 10),
    ("1f1b", "fp32", None, 10),
    ("1f1b", "fp32", "bf16", 10),
]
_WIRE = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def trained():
    cases = [dict(schedule=s, precision=p, boundary=b, steps=n) for s, p, b, n in CASES]
    return launch(J.train_job, nprocs=2, args=(cases,), options=ONE_THREAD)


def _merged(per_rank, i, key="weights"):
    out = {}
    for r in per_rank:
        out.update(r[i][key])
    return out


def _reference(**kw):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        return J.reference(**kw)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_pipelined_training_equals_one_process_under_the_same_policy(trained, i):
    schedule, precision, boundary, steps = CASES[i]
    wire = _WIRE[boundary] if boundary else (torch.bfloat16 if precision == "bf16" else None)
    ref = _reference(schedule=schedule, P=2, precision=precision, boundary=wire, steps=steps)
    losses = trained[0][i]["losses"]
    assert [r[i]["losses"] for r in trained] == [losses, losses]  # every rank, the same
    assert len(losses) == steps
    assert max(abs(a - b) / abs(b) for a, b in zip(losses, ref["losses"])) < TOL
    got = _merged(trained, i)
    assert set(got) == set(ref["weights"])
    for name, want in ref["weights"].items():
        assert rel_err(torch.tensor(got[name]), torch.tensor(want)) < TOL, name


def test_the_loss_curve_falls_and_bf16_follows_fp32(trained):
    """The 50-step bf16 run trains (its loss falls), and stays within 1 % of
    the fp32 run of the same model (bf16 rounds each product to 8 bits; the
    measured gap is printed for the docs)."""
    bf16 = trained[0][0]["losses"]
    fp32 = _reference(schedule="1f1b", P=2, precision="fp32", boundary=None, steps=50)["losses"]
    assert sum(bf16[-10:]) / 10 < sum(bf16[:10]) / 10 - 0.05
    gap = max(abs(a - b) / b for a, b in zip(bf16, fp32))
    print(f"bf16 vs fp32 loss over 50 steps: largest relative gap {gap:.2e}")
    assert gap < 1e-2


def test_the_boundary_dtype_halves_the_bytes_at_every_cut(trained):
    """Byte counter: the same steps send exactly half the bytes with a bf16
    boundary as with an fp32 one, on every rank (activations forward,
    gradients back; the token ids never cross a cut)."""
    by_case = {(c[0], c[1], c[2]): i for i, c in enumerate(CASES)}
    bf16, fp32 = by_case[("1f1b", "bf16", None)], by_case[("1f1b", "bf16", "fp32")]
    for r in trained:
        for a, b in zip(r[bf16]["sent"], r[fp32]["sent"]):
            assert a > 0 and 2 * a == b
    wide, narrow = by_case[("1f1b", "fp32", None)], by_case[("1f1b", "fp32", "bf16")]
    for r in trained:
        assert 2 * r[narrow]["sent"][0] == r[wide]["sent"][0]


@pytest.fixture(scope="module")
def p2():
    return launch(_guard_jobs.p2_job, nprocs=2, options=ONE_THREAD)


@pytest.fixture(scope="module")
def dp2():
    return launch(_guard_jobs.dp_job, nprocs=4, options=ONE_THREAD)


def _check_overflow_skipped(runs: list[dict], at: int = 2):
    """Every rank skipped step ``at`` alone, its weights unchanged by it, and
    every rank holds the same scale after every step: 2**12, halved at the
    overflow, doubled after 3 clean updates."""
    want = [2.0 ** 12, 2.0 ** 12, 2.0 ** 11, 2.0 ** 11, 2.0 ** 11, 2.0 ** 12]
    for run in runs:
        rows = run["rows"]
        assert [row["skipped"] for row in rows] == [k == at for k in range(len(rows))]
        assert [row["scale"] for row in rows] == want  # exact: bit-equal on every rank
        assert rows[at]["weights"] == rows[at - 1]["weights"]  # no update at all
        assert rows[at + 1]["weights"] != rows[at]["weights"]
        assert run["skipped_steps"] == 1
        assert rows[at]["finite"] is False and rows[at - 1]["finite"] is True
    losses = [[row["loss"] for row in run["rows"]] for run in runs]
    assert all(ls == losses[0] for ls in losses)


def test_fp16_overflow_on_one_stage_is_skipped_by_every_rank(p2):
    _check_overflow_skipped([r["scaler"] for r in p2])


def test_fp16_overflow_on_one_replica_is_skipped_by_every_replica(dp2):
    runs = [r["scaler"] for r in dp2]
    assert sorted((r["dp_rank"], r["rank"]) for r in runs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _check_overflow_skipped(runs)


def test_fp16_scaling_composes_with_clipping_and_accumulation(p2):
    """Unscaled before clipping (norm over both ranks), then the mean over the
    2 accumulated calls: equal to one process doing the same by hand."""
    ref = _reference(schedule="1f1b", P=2, precision="fp16", boundary=torch.float16, steps=3,
                     scale=2.0 ** 10, clip=0.05, accumulate=2)
    got = {}
    for r in p2:
        got.update(r["clip"]["weights"])
    for name, want in ref["weights"].items():
        assert rel_err(torch.tensor(got[name]), torch.tensor(want)) < TOL, name


def test_a_nan_loss_skips_the_update_on_every_rank(p2):
    for r in p2:
        rows = r["skip_loss"]["rows"]
        assert [row["skipped"] for row in rows] == [False, True, False]
        assert rows[1]["weights"] == rows[0]["weights"]
        assert rows[2]["weights"] != rows[1]["weights"]
        assert r["skip_loss"]["skipped_steps"] == 1


@pytest.mark.parametrize("where, named", [
    ("loss", r"rank 1 \(stage 1\): the step's loss is nan"),
    ("grad", r"rank 0 \(stage 0\): first non-finite gradient: '0\.weight'"),
])
def test_a_nan_stops_every_rank_naming_where(where, named):
    """Every rank raises the same error at the failing step. It ends the run
    by itself: not through the hang watch, which would print its table, nor
    a timeout (timing is not asserted: a loaded machine stretches it)."""
    with pytest.raises(RankFailedError) as e:
        launch(_guard_jobs.guard_job, nprocs=2, args=("raise", where), options=ONE_THREAD)
    text = str(e.value)
    assert "step 1: a NaN or Inf reached the gradients, so no rank updated" in text
    assert re.search(named, text), text
    assert "nonfinite='skip'" in text  # the fix is named
    assert "hang" not in text and "timed out" not in text


@pytest.mark.parametrize("fixture", ["p2", "dp2"])
def test_forward_backward_returns_final_gradients(fixture, request):
    """Tied embedding/head (float64): after forward_backward every gradient
    equals the unsplit model's on the global batch (1e-12: the reference runs
    one unsplit batch, the pipeline micro-batches, so rounding differs);
    sync=False leaves the tie unsummed until finish_grads()."""
    runs = request.getfixturevalue(fixture)
    tied_seen = False
    for r in runs:
        synced, deferred = r["final"]
        assert all(e < 1e-12 for e in synced["tied_err"] + synced["other_err"]), synced
        assert all(e < 1e-12 for e in deferred["after_tied_err"] + deferred["after_other_err"])
        assert deferred["finite"] is True
        if deferred["tied_err"]:
            tied_seen = True
            assert min(deferred["tied_err"]) > 1e-3  # half of the tie's sum is missing
    assert tied_seen


# -- bad input (one process) --------------------------------------------------------

def test_bad_precision_settings_are_named():
    for kw, message in (
            ({"precision": "bf8"}, "precision='bf8'; use 'fp32'"),
            ({"boundary_dtype": "int8"}, "boundary_dtype='int8'; use one of"),
            ({"nonfinite": "ignore"}, "nonfinite='ignore'; use 'raise'"),
            ({"loss_scale": -1.0}, r"LossScale\(init=-1.0\); use a finite number positive"),
            ({"loss_scale": "auto"}, "loss_scale='auto'; use None")):
        with pytest.raises(PipelineError, match=message):
            PipelineConfig(**kw)
    with pytest.raises(PipelineError, match="backoff_factor"):
        LossScale(backoff_factor=2.0)


def test_a_boundary_that_cannot_hold_the_activations_is_refused():
    model = J.model()
    for kw, message in (
            ({"precision": "bf16", "boundary_dtype": "fp16"},
             r"boundary_dtype=float16 cannot hold bfloat16 activations: its largest value is "
             r"65504"),
            ({"precision": "fp32", "boundary_dtype": "fp16"}, "cannot hold float32"),
            ({"precision": "fp16", "boundary_dtype": "bf16"},
             "keeps fewer bits than the float16 compute")):
        with pytest.raises(PipelineError, match=message):
            Pipeline(model, loss_fn=J.TokenCrossEntropy(), optimizer=None, schedule="1f1b",
                     config=PipelineConfig(**kw))


def test_low_precision_parameters_under_a_mixed_policy_are_refused():
    with pytest.raises(PipelineError, match=r"stage 0's parameter '0.weight' is bfloat16; "
                                            r"build the model in float32"):
        Pipeline(J.model().to(torch.bfloat16), loss_fn=J.TokenCrossEntropy(), optimizer=None,
                 schedule="1f1b", config=PipelineConfig(precision="bf16"))


def test_a_device_that_cannot_autocast_is_refused(monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False,
                        raising=False)
    with pytest.raises(PipelineError, match="does not offer on cpu; use precision='fp32'"):
        Pipeline(J.model(), loss_fn=J.TokenCrossEntropy(), optimizer=None, schedule="1f1b",
                 config=PipelineConfig(precision="fp16"))


def test_one_process_fp16_scale_and_guard(tmp_path):
    """P=1 runs the same code path: a clean step keeps the scale, an Inf
    gradient skips and halves it; a checkpoint resumes the scale."""
    cfg = PipelineConfig(precision="fp16", loss_scale=LossScale(init=2.0 ** 8))
    pipe = Pipeline(J.model(), loss_fn=J.TokenCrossEntropy(), optimizer=J.adam,
                    schedule="1f1b", microbatches=2, config=cfg)
    first = pipe.step(*J.batch(0))
    assert not first.skipped and first.finite and pipe.loss_scale == 2.0 ** 8
    p = next(iter(pipe.stages[0].parameters()))
    h = p.register_hook(lambda g: g * math.inf)
    second = pipe.step(*J.batch(1))
    h.remove()
    assert second.skipped and second.finite is False and pipe.loss_scale == 2.0 ** 7
    assert math.isfinite(second.loss)
    pipe.save(tmp_path / "ck")
    again = Pipeline(J.model(), loss_fn=J.TokenCrossEntropy(), optimizer=J.adam,
                     schedule="1f1b", microbatches=2, config=cfg)
    assert again.loss_scale == 2.0 ** 8
    again.load(tmp_path / "ck")
    assert again.loss_scale == 2.0 ** 7 and again.skipped_steps == 1


def test_token_cross_entropy_sums_bf16_logits_in_float32():
    """4,096 tokens of bf16 logits: summed in float32 the loss equals the
    float64 loss of the same (bf16-rounded) logits to 1e-6; summed in bf16,
    as before, it was 1e-3 off (checked here so the test could fail)."""
    torch.manual_seed(0)
    logits = (torch.randn(4, 1024, 50) * 3).bfloat16()
    y = torch.randint(0, 50, (4, 1024))
    want = torch.nn.functional.cross_entropy(logits.double().reshape(-1, 50), y.reshape(-1),
                                             reduction="sum")
    got = J.TokenCrossEntropy()(logits, y)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) / float(want) < 1e-6
    summed_in_bf16 = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), y.reshape(-1),
                                                       reduction="sum")
    assert abs(float(summed_in_bf16) - float(want)) / float(want) > 1e-4


def test_ranks_with_different_precision_settings_are_refused():
    """The step agreement compares the settings every rank must share, so a
    bf16 rank beside an fp32 one fails at once, naming the setting, instead
    of training two different models."""
    with pytest.raises(RankFailedError) as e:
        launch(_guard_jobs.mixed_settings_job, nprocs=2, options=ONE_THREAD)
    text = str(e.value)
    assert "the ranks disagree on the schedule or its settings" in text, text
    assert "precision='fp32'" in text and "precision='bf16'" in text
    assert "PipelineConfig alike on every rank" in text
