"""API misuse: each mistake raises a typed error that names the bad value.

One table, run in this process (a Pipeline without a process group is one
rank); the misuses that need several ranks (disagreeing ranks) are grouped in
one launch in test_agreement.py.
"""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import (
    CostModelError, PartitionError, PipelineError, PlanError, ScheduleError, TimelineError,
)
from conveyor.plan import load_plan, load_profile
from conveyor.runtime import (
    CheckpointError, LaunchOptions, Pipeline, PipelineConfig, StageError, export_state_dict,
    launch,
)
from conveyor.schedule import Schedule, build_schedule, load_schedule
from conveyor.schedule.io import schedule_from_dict
from conveyor.sim import CostModel, load_timeline, simulate
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


def _no_grad(call):
    with torch.no_grad():
        return call()


def _inference(call):
    with torch.inference_mode():
        return call()


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
    ("empty batch", _step(lambda: _pipe(), x4[:0], x4[:0]), StageError,
     "the batch is empty (inputs 0, targets 0 samples"),
    ("step under no_grad", lambda: _no_grad(lambda: _pipe().step(x4, x4)), StageError,
     "inside torch.no_grad() or torch.inference_mode()"),
    ("step under inference_mode", lambda: _inference(lambda: _pipe().step(x4, x4)), StageError,
     "call it outside that block, or use evaluate() or predict()"),
    ("forward_backward under no_grad", lambda: _no_grad(lambda: _pipe().forward_backward(x4, x4)),
     StageError, "gradients disabled"),
    # core entries that allocate by P, M or a file's claims
    ("build P huge", lambda: build_schedule("gpipe", BIG, 4), ScheduleError, str(BIG)),
    ("build M huge", lambda: build_schedule("1f1b", 4, BIG), ScheduleError, str(BIG)),
    ("build cells", lambda: build_schedule("1f1b", 1024, 1024), ScheduleError, "1048576"),
    ("timeline claims P", lambda: Timeline.from_dict(
        {"P": BIG, "M": 4, "S": 4, "schedule": "gpipe", "events": []}), TimelineError, str(BIG)),
    ("placement 5", lambda: schedule_from_dict({"actions": [["0F0", "0B0"]], "placement": 5}),
     ScheduleError, "'placement' is 5"),
    ("build v huge", lambda: build_schedule("interleaved-1f1b", 4, 8, v=100000), ScheduleError,
     "S=400000 stages (v=100000 chunks per rank)"),
    ("build S x M", lambda: build_schedule("looped-bfs", 16, 4096, v=32), ScheduleError,
     "2097152"),
    ("rows claim S", lambda: Schedule("x", 1, 512, ((),), placement=(0,) * 4096), ScheduleError,
     "S=4096 stages"),
    ("timeline claims S", lambda: Timeline.from_dict(
        {"P": 4, "M": 4096, "S": 1024, "schedule": "gpipe", "events": []}), TimelineError,
     "4194304"),
    # files that are not files, read through conveyor.userfiles
    ("schedule /dev/zero", lambda: load_schedule("/dev/zero"), ScheduleError,
     "'/dev/zero' is a character device, not a file"),
    ("timeline /dev/urandom", lambda: load_timeline("/dev/urandom"), TimelineError,
     "character device"),
    ("plan /dev/zero", lambda: load_plan("/dev/zero"), PlanError, "character device"),
    ("profile a folder", lambda: load_profile("/"), PlanError, "'/' is a folder, not a file"),
    ("plan missing", lambda: load_plan("/nonexistent/p.json"), PlanError,
     "cannot read plan '/nonexistent/p.json': No such file"),
    ("checkpoint a device", lambda: export_state_dict("/dev/null"), CheckpointError,
     "no checkpoint at '/dev/null'"),
    ("cost negative", lambda: CostModel(forward=-1), CostModelError, "-1"),
    ("cost per stage", lambda: simulate(build_schedule("gpipe", 4, 2), CostModel(forward=[1, 2])),
     CostModelError, "2"),
]


@pytest.mark.parametrize("name, call, error, names", CASES, ids=[c[0] for c in CASES])
def test_misuse_raises_a_typed_error_naming_the_value(name, call, error, names):
    with pytest.raises(error) as info:
        call()
    assert names in str(info.value), str(info.value)


def test_the_tables_cover_at_least_sixty_misuses():
    assert len(CASES) + len(FILE_CASES) >= 60


FILE_CASES = [  # (name, file contents, loader, error, words)
    ("deep schedule", "deep.json", load_schedule, ScheduleError, "nests JSON deeper"),
    ("deep timeline", "deep.json", load_timeline, TimelineError, "nests JSON deeper"),
    ("deep plan", "deep.json", load_plan, PlanError, "nests JSON deeper"),
    ("deep profile", "deep.json", load_profile, PlanError, "nests JSON deeper"),
    ("fifo schedule", "fifo", load_schedule, ScheduleError, "a FIFO (named pipe), not a file"),
    ("fifo timeline", "fifo", load_timeline, TimelineError, "a FIFO"),
    ("fifo plan", "fifo", load_plan, PlanError, "a FIFO"),
    ("fifo profile", "fifo", load_profile, PlanError, "a FIFO"),
    ("huge timeline", "huge", load_timeline, TimelineError, "beyond the bound of 256.0 MiB"),
    ("profile batch oops", "oops", load_profile, PlanError, "batch is 'oops'"),
]


def _make(tmp_path, kind: str):
    path = tmp_path / "f.json"
    if kind == "deep.json":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "fifo":
        import os
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as f:  # sparse
            f.truncate(300 * 2 ** 20)
    elif kind == "oops":
        import json
        from tests.plan._profiles import synthetic
        path.write_text(json.dumps(dict(synthetic([1] * 4).to_dict(), batch="oops")))
    return path


@pytest.mark.parametrize("name, kind, load, error, names", FILE_CASES,
                         ids=[c[0] for c in FILE_CASES])
def test_a_bad_file_raises_a_typed_error_naming_it(tmp_path, name, kind, load, error, names):
    path = _make(tmp_path, kind)
    with pytest.raises(error) as info:
        load(path)
    assert names in str(info.value) and str(path) in str(info.value), str(info.value)


def test_a_script_without_the_main_guard_is_named(tmp_path):
    """Each local rank re-imports the script to find its function; without the
    guard it would launch again. The launcher says so, instead of "rank 1
    died (exit code 1) without reporting an error"."""
    import subprocess
    import sys

    from tests.runtime._procs import ROOT, env

    script = tmp_path / "noguard.py"
    script.write_text("from conveyor.runtime import launch\n"
                      "from tests.runtime.test_api_misuse import _f\n"
                      "launch(_f, nprocs=2)\n")
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "without the `if __name__ == \"__main__\":` guard" in run.stderr, run.stderr[-3000:]
    assert f"{script} calls launch() when it is imported" in run.stderr
    assert "bootstrapping phase" not in run.stderr  # multiprocessing's own words, per rank
