"""Elastic restart: a killed rank restarts the group, which resumes from the
newest checkpoint by itself, also at another P (gloo, real processes).

The script (_elastic_jobs.py) trains 12 steps with a checkpoint every 5, keep
2; on its first attempt rank 1 SIGKILLs itself before step 7. The restarted
group resumes at step 5. Its losses and final weights must equal, bit for
bit, those of an uninterrupted run (float64); every process of every attempt
must be gone when the launcher returns.
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
from conveyor.runtime import CheckpointPolicy, LaunchOptions, RankContext, launch
from conveyor.runtime.procs import ckptdir
from conveyor.runtime.procs.elastic import latest_checkpoint, prune
from tests.runtime._elastic_jobs import elastic_job, merged
from tests.runtime._procs import ROOT, alive, env, free_port, why_failed

STEPS, KILL_AT = 12, 7


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run, in this process (P=1: the checkpoint tests show
    a pipeline's arithmetic does not depend on P)."""
    single = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                         backend="none", launcher="single")
    return elastic_job(single, str(tmp_path_factory.mktemp("reference")), STEPS)


def steps_logged(out: Path) -> list[tuple[int, int, int, float]]:
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return [(r["attempt"], r["P"], r["step"], r["loss"]) for r in rows]


def no_rank_left(out: Path, attempts: int) -> None:
    pids = {p.name: int(p.read_text()) for p in (out / "pids").iterdir()}
    assert {n.split("-")[0] for n in pids} == {f"a{a}" for a in range(attempts)}, pids
    assert not [n for n, p in pids.items() if alive(p)], "a rank outlived its launcher"


def same_as_reference(run: dict, ref: dict, first: int) -> None:
    assert run["resumed"] == first
    assert {int(k): v for k, v in run["losses"].items()} == \
        {k: v for k, v in ref["losses"].items() if k >= first}
    assert run["weights"] == ref["weights"]  # every weight, exactly


@pytest.mark.runtime
def test_torchrun_restarts_the_group_which_resumes_from_the_checkpoint(tmp_path, reference):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "--max-restarts", "1",
                          str(ROOT / "tests/runtime/_elastic_script.py"), str(tmp_path),
                          str(STEPS), str(KILL_AT)], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, why_failed(run.stdout + run.stderr)
    no_rank_left(tmp_path, attempts=2)
    logged = steps_logged(tmp_path)
    # Attempt 0 ran steps 0..6 and died at 7; attempt 1 redid 5 and 6.
    assert [(a, k) for a, _, k, _ in logged] == \
        [(0, k) for k in range(KILL_AT)] + [(1, k) for k in range(5, STEPS)]
    assert all(loss == reference["losses"][k] for _, _, k, loss in logged)
    same_as_reference(json.loads((tmp_path / "result.json").read_text()), reference, first=5)
    assert "resumed from" in run.stderr and "step-00000005 (step 5)" in run.stderr
    # keep=2: of the checkpoints at 5 and 10, both stay; nothing else is left.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == \
        ["step-00000005", "step-00000010"]


@pytest.mark.runtime
def test_torchrun_world_shrinks_when_a_node_dies(tmp_path, reference):
    """Two torchrun agents on this machine stand for two nodes (--nnodes 1:2,
    a rank each). When one agent dies with its rank (its rank SIGKILLs both
    before step 7), the other restarts alone: a world of 1, which re-cuts
    the P=2 checkpoint of step 5 for P=1 and finishes equal to the
    uninterrupted run."""
    import os
    import signal

    port = free_port()

    def agent(name: str, is_host: int, **extra) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "shrink",
               "--max-restarts", "2", "--rdzv-conf",
               f"is_host={is_host},last_call_timeout=5,join_timeout=60,"
               "keep_alive_interval=1,keep_alive_max_attempt=2", "--local-addr", "127.0.0.1",
               "--monitor-interval", "3", str(ROOT / "tests/runtime/_elastic_script.py"),
               str(tmp_path), str(STEPS)]
        return subprocess.Popen(cmd, cwd=ROOT, env={**env(), **extra},
                                stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"{name}.err", "w"),
                                start_new_session=True)

    host = agent("host", 1)  # it hosts the rendezvous store, so it must survive
    other = agent("other", 0, CONVEYOR_TEST_NODE_DIES_AT="7")
    try:
        assert host.wait(timeout=240) == 0, why_failed((tmp_path / "host.err").read_text())
        assert other.wait(timeout=30) == -signal.SIGKILL
    finally:
        for proc in (host, other):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    logged = steps_logged(tmp_path)
    resumed_at = next(k for a, _, k, _ in logged if a == 1)
    assert {p for a, p, _, _ in logged if a == 0} == {2}
    assert {p for a, p, _, _ in logged if a == 1} == {1}
    assert resumed_at == 5 and [k for a, _, k, _ in logged if a == 1] == list(range(5, STEPS))
    assert all(loss == reference["losses"][k] for _, _, k, loss in logged)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["P"] == 1 and result["saved_P"] == 2
    same_as_reference(result, reference, first=5)
    assert "saved at P=2, re-cut for P=1" in (tmp_path / "host.err").read_text()
    pids = [int(p.read_text()) for p in (tmp_path / "pids").iterdir()]
    assert len(pids) == 3 and not [p for p in pids if alive(p)], "a rank outlived its node"


@pytest.mark.runtime
def test_a_smaller_world_reshards_and_the_local_launcher_restarts(tmp_path, reference, capfd):
    # P=4 trains 10 steps (checkpoints at 5 and 10).
    four = merged(launch(elastic_job, nprocs=4, args=(str(tmp_path), 10)))
    assert four["resumed"] is None
    # The same script at P=2 re-plans for 2 ranks and resumes at step 10 from
    # P=4's checkpoint; on its first attempt rank 1 is killed before step 11,
    # the launcher restarts both ranks, which resume at 10 again and finish.
    two = merged(launch(elastic_job, nprocs=2, args=(str(tmp_path), STEPS, 11),
                        options=LaunchOptions(max_restarts=1)))
    err = capfd.readouterr().err
    assert "attempt 0 failed: rank 1 was killed by signal 9 (SIGKILL)" in err
    assert "restarting all 2 ranks (1 restart(s) left)" in err
    assert err.count("saved at P=4, re-cut for P=2") == 2  # once per attempt
    assert two["attempt"] == 1 and two["saved_P"] == 4 and two["P"] == 2
    assert two["resumed_weights"] == four["weights"]  # exactly what P=4 saved
    same_as_reference(two, reference, first=10)
    assert {int(k): v for k, v in four["losses"].items()} == \
        {k: v for k, v in reference["losses"].items() if k < 10}
    no_rank_left(tmp_path, attempts=2)


@pytest.mark.runtime
def test_a_failure_every_rank_meets_alike_is_not_restarted(capfd):
    with pytest.raises(Exception, match="M must be a positive integer"):
        launch(_bad_argument_job, nprocs=1, options=LaunchOptions(max_restarts=3))
    assert "restarting" not in capfd.readouterr().err


def _bad_argument_job(ctx):
    from conveyor.runtime import Pipeline
    Pipeline(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
             loss_fn=torch.nn.functional.mse_loss, optimizer=None, microbatches=0, ctx=ctx)


# -- the policy's arguments and retention, no processes -------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"dir": None, "every": 5}, "dir=None"),
    ({"dir": "", "every": 5}, "dir=''"),
    ({"dir": "ckpt", "every": 0}, "every=0"),
    ({"dir": "ckpt", "every": 2.5}, "every=2.5"),
    ({"dir": "ckpt", "every": True}, "every=True"),
    ({"dir": "ckpt", "every": 5, "keep": 0}, "keep=0"),
    ({"dir": "ckpt", "every": 5, "keep": None}, "keep=None"),
    ({"dir": "ckpt", "every": 5, "keep": 10**6}, r"keep=1000000; use an integer in 1\.\.1000"),
])
def test_bad_policy_arguments_name_the_value(kwargs, match):
    with pytest.raises(PipelineError, match=match):
        CheckpointPolicy(**kwargs)


def test_a_file_where_the_directory_goes_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(PipelineError, match="is a file, not a directory"):
        CheckpointPolicy(tmp_path / "f", every=1)


@pytest.mark.parametrize("value, match", [(-1, "max_restarts=-1"), (101, "max_restarts=101"),
                                          (1.0, "max_restarts=1.0")])
def test_bad_max_restarts(value, match):
    with pytest.raises(PipelineError, match=match):
        LaunchOptions(max_restarts=value)


def _fake(d: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder as Pipeline.save leaves it (marker, one rank file,
    manifest), or as a save that crashed before its commit leaves it."""
    p = d / f"step-{step:08d}"
    sid = ckptdir.new_id()
    ckptdir.begin(p, nfiles=1, save_id=sid)
    (p / ckptdir.rank_file(0, sid)).write_bytes(b"weights")
    if complete:
        ckptdir.commit(p, {"format": "conveyor-checkpoint", "version": 1,
                           "files": {ckptdir.rank_file(0, sid): []}}, sid)
    return p


def _user(d: Path, name: str) -> None:
    (d / name).mkdir(parents=True)
    (d / name / "u.txt").write_text("mine")


def test_retention_keeps_the_newest_and_clears_leftovers(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    for k in (5, 10, 15, 20):
        _fake(tmp_path, k)
    _fake(tmp_path, 25, complete=False)     # a save that crashed before its commit
    for name in ("notes", "step-00000001.del", "step-00000002.tmp", "step-00000030"):
        _user(tmp_path, name)               # not conveyor's: untouched, whatever the name
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000020"
    gone = prune(tmp_path, keep=2)
    assert [p.name for p in gone] == ["step-00000005", "step-00000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["notes", "step-00000001.del", "step-00000002.tmp", "step-00000015", "step-00000020",
         "step-00000030"]
    assert (tmp_path / "step-00000030" / "u.txt").read_text() == "mine"


def test_a_delete_that_crashed_midway_is_finished_by_the_next_prune(tmp_path):
    p = _fake(tmp_path, 5)
    _fake(tmp_path, 10)
    os.replace(p / ckptdir.MANIFEST, p / ckptdir.DELETING)  # un-published, then the crash
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert prune(tmp_path, keep=1) == []
    assert sorted(q.name for q in tmp_path.iterdir()) == ["step-00000010"]


def test_a_save_inside_an_accumulation_window_is_refused(tmp_path):
    from conveyor.runtime import Pipeline, PipelineConfig
    pipe = Pipeline(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)),
                    loss_fn=torch.nn.functional.mse_loss, optimizer=None, microbatches=1,
                    config=PipelineConfig(accumulate=2))
    with pytest.raises(PipelineError, match="every=5 is not a multiple of accumulate=2.*every=6"):
        CheckpointPolicy(tmp_path, every=5).save_if_due(pipe)
    assert CheckpointPolicy(tmp_path, every=4).save_if_due(pipe) is None  # step 0: not due
