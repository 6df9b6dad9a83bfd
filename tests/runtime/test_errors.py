"""Bad input gets a typed error that names the rank or stage, the numbers and the fix.

Most cases run in this process (P = 1, where the pipeline needs no process
group; several stages on one rank where a cut is needed); the cross-process
cases launch real ranks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conveyor.errors import PartitionError, PipelineError, ScheduleError
from conveyor.runtime import Pipeline, RankFailedError, StageError, launch, split_model
from conveyor.schedule import Action, Schedule
from conveyor.schedule.ir import B, F
from tests.runtime import _jobs, _models


def chunks_on_one_rank(S: int, M: int) -> Schedule:
    """S stages on one rank, fill-drain: cuts that stay in memory."""
    row = [Action(s, F, mb) for mb in range(M) for s in range(S)]
    row += [Action(s, B, mb) for mb in range(M) for s in reversed(range(S))]
    return Schedule("chunks", 1, M, (tuple(row),), placement=(0,) * S)


def pipe(model=None, **kw):
    kw.setdefault("loss_fn", _models.loss_fn)
    kw.setdefault("optimizer", None)
    return Pipeline(model if model is not None else _models.mlp(3), **kw)


def test_batch_smaller_than_M():
    x, y = _models.batch(3)
    with pytest.raises(StageError) as e:
        pipe(schedule="gpipe", microbatches=4).step(x, y)
    msg = str(e.value)
    assert "rank 0 (stage 0)" in msg
    assert "batch of 3 samples cannot be cut into M=4" in msg
    assert "microbatches <= 3" in msg and "at least 4" in msg


def test_loss_that_is_not_a_scalar():
    x, y = _models.batch(8)
    per_sample = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    with pytest.raises(StageError) as e:
        pipe(loss_fn=per_sample, schedule="1f1b", microbatches=2).step(x, y)
    msg = str(e.value)
    assert "rank 0 (stage 0)" in msg
    assert "loss_fn returned a tensor of shape (4,) for micro-batch 0" in msg
    assert "reduction='mean'" in msg
    assert e.value.mb == 0 and e.value.stage == 0


def test_fewer_layers_than_stages():
    with pytest.raises(PartitionError, match=r"cannot split 3 layers into 4 stages.*at most 3"):
        split_model([nn.Linear(2, 2) for _ in range(3)], 4)
    # Through the pipeline: 4 stages on one rank, a 3-layer model.
    with pytest.raises(PartitionError, match="cannot split 3 layers into 4 stages"):
        pipe([nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)], schedule=chunks_on_one_rank(4, 2))


@pytest.mark.parametrize("balance, message", [
    ([4, 4], r"balance \[4, 4\] sums to 8 but the model has 7 layers"),
    ([7, 0], r"leaves stage 1 empty \(0 layers\)"),
    ([7], r"has 1 entries but the pipeline has 2 stages"),
])
def test_bad_balance(balance, message):
    with pytest.raises(PartitionError, match=message):
        split_model(_models.mlp(3), 2, balance=balance)


def test_stage_output_that_does_not_fit_the_next_stage():
    layers = [nn.Linear(5, 6), nn.Tanh(), nn.Linear(7, 3)]
    x, y = _models.batch(8)
    p = pipe([m.double() for m in layers], schedule=chunks_on_one_rank(2, 2), balance=[2, 1])
    with pytest.raises(StageError) as e:
        p.step(x, y)
    msg = str(e.value)
    assert "rank 0 (stage 1) cannot use the output of stage 0" in msg
    assert "(4, 6) float64" in msg
    assert "Linear(in_features=7, out_features=3" in msg
    assert "balance=" in msg
    assert (e.value.stage, e.value.mb) == (1, 0)
    assert ">1F0<" in e.value.grid  # the schedule, failing action marked


def test_stage_that_returns_no_tensor():
    class Bad(nn.Module):
        def forward(self, x):
            return {"x": x}

    x, y = _models.batch(4)
    p = pipe([nn.Linear(5, 5).double(), Bad(), nn.Linear(5, 3).double()],
             schedule=chunks_on_one_rank(2, 1), balance=[2, 1])
    with pytest.raises(StageError, match="stage 0.* returned a dict for micro-batch 0"):
        p.step(x, y)


def test_missing_batch_and_wrong_schedule_size():
    with pytest.raises(StageError, match="cannot tell the batch size"):
        pipe(schedule="1f1b", microbatches=2).step()
    with pytest.raises(PipelineError, match="schedule '1f1b' is for P=2 ranks but 1 processes"):
        from conveyor.schedule import build_schedule
        pipe(schedule=build_schedule("1f1b", 2, 4))
    with pytest.raises(ScheduleError, match="unknown schedule 'gpip'; did you mean 'gpipe'"):
        pipe(schedule="gpip")


@pytest.mark.runtime
def test_mismatch_across_processes_names_the_receiving_rank():
    with pytest.raises(RankFailedError) as e:
        launch(_jobs.mismatch_job, nprocs=2)
    err = e.value
    assert (err.rank, err.stage, err.mb) == (1, 1, 0)
    msg = str(err)
    assert msg.startswith("rank 1 (stage 1) cannot use the output of stage 0")
    assert "(4, 6) float32" in msg and "Linear(in_features=7" in msg
    assert msg.count("mat1 and mat2 shapes cannot be multiplied") == 1


@pytest.mark.runtime
def test_bad_argument_on_every_rank_is_reported_once():
    with pytest.raises(RankFailedError) as e:
        launch(_jobs.too_few_layers_job, nprocs=2, args=(1,))
    msg = str(e.value)
    assert msg.startswith("rank 0 failed: PartitionError: cannot split 1 layer into 2 stages")
    assert msg.count("cannot split") == 1
    assert e.value.report.kind == "same"
