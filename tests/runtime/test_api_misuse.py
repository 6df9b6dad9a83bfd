"""API misuse: each mistake raises a typed error that names the bad value.

One table, run in this process (a Pipeline without a process group is one
rank); the misuses that need several ranks (disagreeing ranks) are grouped in
one launch in test_agreement.py.
"""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import (
    CostModelError, PartitionError, PipelineError, ScheduleError, TimelineError,
)
from conveyor.runtime import LaunchOptions, Pipeline, PipelineConfig, StageError, launch
from conveyor.schedule import build_schedule
from conveyor.schedule.io import schedule_from_dict
from conveyor.sim import CostModel, simulate
from conveyor.sim.timeline import Timeline

BIG = 10 ** 9


def _f(ctx):
    return ctx.rank


def _loss(o, t):
    return ((o - t) ** 2).mean()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))


def _pipe(**kw):
    args = dict(loss_fn=_loss, optimizer=None, microbatches=2)
    args.update(kw)
    return Pipeline(kw.pop("model", None) or _model(), **{k: v for k, v in args.items()
                                                         if k != "model"})


def _step(pipe, *a, **kw):
    return lambda: pipe().step(*a, **kw)


x4 = torch.randn(4, 4)

CASES = [
    # PipelineConfig
    ("timeout -1", lambda: PipelineConfig(timeout_s=-1), PipelineError, "timeout_s=-1"),
    ("timeout 0", lambda: PipelineConfig(timeout_s=0), PipelineError, "timeout_s=0"),
    ("timeout nan", lambda: PipelineConfig(timeout_s=float("nan")), PipelineError, "nan"),
    ("timeout str", lambda: PipelineConfig(timeout_s="300"), PipelineError, "'300'"),
    ("timeout huge", lambda: PipelineConfig(timeout_s=1e30), PipelineError, "1e+30"),
    ("reduction", lambda: PipelineConfig(loss_reduction="avg"), PipelineError, "'avg'"),
    ("clock rounds", lambda: PipelineConfig(clock_rounds=0), PipelineError, "clock_rounds=0"),
    ("record str", lambda: PipelineConfig(record="yes"), PipelineError, "'yes'"),
    ("prepost int", lambda: PipelineConfig(prepost=1), PipelineError, "prepost=1"),
    # LaunchOptions and launch
    ("launch timeout", lambda: LaunchOptions(timeout_s=-5), PipelineError, "-5"),
    ("launch grace", lambda: LaunchOptions(grace_s=-1), PipelineError, "grace_s=-1"),
    ("launch deadline", lambda: LaunchOptions(deadline_s=float("inf")), PipelineError, "inf"),
    ("launch backend", lambda: LaunchOptions(backend="mpi"), PipelineError, "'mpi'"),
    ("launch threads", lambda: LaunchOptions(threads=0), PipelineError, "threads=0"),
    ("launch pin", lambda: LaunchOptions(pin="yes"), PipelineError, "pin='yes'"),
    ("launch keep_heap", lambda: LaunchOptions(keep_heap=1), PipelineError, "keep_heap=1"),
    ("nprocs 0", lambda: launch(_f, nprocs=0), PipelineError, "got 0"),
    ("nprocs huge", lambda: launch(_f, nprocs=2000), PipelineError, "2000"),
    ("nprocs bool", lambda: launch(_f, nprocs=True), PipelineError, "True"),
    ("fn not callable", lambda: launch(42, nprocs=1), PipelineError, "42"),
    ("options dict", lambda: launch(_f, nprocs=1, options={"timeout_s": 1}), PipelineError,
     "timeout_s"),
    # Pipeline
    ("optimizer instance", lambda: _pipe(optimizer=torch.optim.SGD(_model().parameters(),
                                                                   lr=0.1)),
     PipelineError, "lambda p: torch.optim.SGD(p, lr=0.1)"),
    ("loss not callable", lambda: _pipe(loss_fn=None), PipelineError, "loss_fn=None"),
    ("schedule name", lambda: _pipe(schedule="nope"), ScheduleError, "nope"),
    ("M 0", lambda: _pipe(microbatches=0), ScheduleError, "got 0"),
    ("M huge", lambda: _pipe(microbatches=10 ** 6), ScheduleError, "1000000"),
    ("balance", lambda: _pipe(balance=[1, 2]), PartitionError, "[1, 2]"),
    ("not a chain", lambda: _pipe(model=torch.nn.Linear(4, 4)), PartitionError, "Linear"),
    ("v balance per rank", lambda: _pipe(schedule="v-half", balance=[2]), PartitionError,
     "places 2 stages on each of its 1 ranks (stages r and 2P-1-r on rank r), so the model is "
     "cut into S = 2 stages, not 1: give 2 counts summing to 2, e.g. balance=[1, 1]"),
    ("v too few layers", lambda: _pipe(schedule="v-min",
                                       model=torch.nn.Sequential(torch.nn.Linear(4, 4))),
     PartitionError, "use a model of at least 2 layers"),
    ("check_weights, stage fn", lambda: Pipeline.from_stages(
        lambda s: torch.nn.Linear(4, 4), loss_fn=_loss, optimizer=None,
        config=PipelineConfig(check_weights=True)), PipelineError, "check_weights"),
    ("stage count", lambda: Pipeline.from_stages([torch.nn.Linear(4, 4)] * 2, loss_fn=_loss,
                                                 optimizer=None), PipelineError, "2 stages"),
    ("schedule for P=2", lambda: _pipe(schedule=build_schedule("gpipe", 2, 2), microbatches=None),
     PipelineError, "P=2"),
    ("M vs schedule", lambda: _pipe(schedule=build_schedule("gpipe", 1, 2), microbatches=3),
     PipelineError, "microbatches=3"),
    ("batch < M", _step(lambda: _pipe(microbatches=4), x4[:2], x4[:2]), StageError, "2 samples"),
    ("no batch", _step(lambda: _pipe()), StageError, "batch size"),
    ("batch sizes disagree", _step(lambda: _pipe(), x4, x4[:3]), StageError, "3"),
    # core entries that allocate by P, M or a file's claims
    ("build P huge", lambda: build_schedule("gpipe", BIG, 4), ScheduleError, str(BIG)),
    ("build M huge", lambda: build_schedule("1f1b", 4, BIG), ScheduleError, str(BIG)),
    ("build cells", lambda: build_schedule("1f1b", 1024, 1024), ScheduleError, "1048576"),
    ("timeline claims P", lambda: Timeline.from_dict(
        {"P": BIG, "M": 4, "S": 4, "schedule": "gpipe", "events": []}), TimelineError, str(BIG)),
    ("placement 5", lambda: schedule_from_dict({"actions": [["0F0", "0B0"]], "placement": 5}),
     ScheduleError, "'placement' is 5"),
    ("cost negative", lambda: CostModel(forward=-1), CostModelError, "-1"),
    ("cost per stage", lambda: simulate(build_schedule("gpipe", 4, 2), CostModel(forward=[1, 2])),
     CostModelError, "2"),
]


@pytest.mark.parametrize("name, call, error, names", CASES, ids=[c[0] for c in CASES])
def test_misuse_raises_a_typed_error_naming_the_value(name, call, error, names):
    with pytest.raises(error) as info:
        call()
    assert names in str(info.value), str(info.value)


def test_the_table_is_at_least_thirty():
    assert len(CASES) >= 30
