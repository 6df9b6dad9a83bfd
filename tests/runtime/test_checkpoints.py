"""Checkpoints on real processes: bit-exact resume, resharding across P, the
unsplit model, and a crash mid-save.

Three launches in all: P=4 trains and saves (gpipe and 1f1b with dropout, 1f1b
without), P=4 resumes in new processes, P=2 reshards and then crashes in a
save; P=1 runs in the test process.
"""

from __future__ import annotations

import json

import pytest
import torch

from conveyor.runtime import Pipeline, launch
from conveyor.runtime.train.checkpoint_io import CheckpointError, export_state_dict, read_manifest
from conveyor.runtime.errors import RankFailedError
from tests.runtime import _ckpt_jobs, _models

pytestmark = pytest.mark.runtime

RESUME = [{"schedule": "gpipe", "dropout": True}, {"schedule": "1f1b", "dropout": True}]
PLAIN = {"schedule": "1f1b"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cfgs = [{**c, "dir": str(root / f"{c['schedule']}-{'drop' if c.get('dropout') else 'plain'}")}
            for c in RESUME + [PLAIN]]
    ranks = launch(_ckpt_jobs.train_save_job, nprocs=4, args=(cfgs,))
    return root, cfgs, ranks


def merged(ranks, i: int, key: str) -> dict:
    return {k: v for r in ranks for k, v in r[i][key].items()}


def test_resume_in_new_processes_is_bit_exact(saved):
    _, cfgs, first = saved
    again = launch(_ckpt_jobs.resume_job, nprocs=4, args=(cfgs[:2],))
    for i, cfg in enumerate(cfgs[:2]):
        for r in range(4):
            assert again[r][i]["info"] == {"step": 10, "saved_P": 4, "rng_restored": True}
            assert again[r][i]["steps"] == 20
            # same losses, bit for bit (dropout: the RNG was restored too)
            assert again[r][i]["losses"] == first[r][i]["losses"][10:], cfg
            assert again[r][i]["lr"] == first[r][i]["lr"]  # the scheduler resumed
        want, got = merged(first, i, "final"), merged(again, i, "final")
        assert want.keys() == got.keys() and len(want) == 8
        assert want == got, cfg  # float lists: equal means bit-equal


def test_checkpoint_is_keyed_by_the_unsplit_model_and_exports_to_it(saved):
    _, cfgs, first = saved
    d = cfgs[2]["dir"]
    manifest = read_manifest(d)
    assert manifest["P"] == 4 and manifest["step"] == 10
    plain = _models.mlp(_ckpt_jobs.DEPTH, seed=3)
    state = export_state_dict(d)
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    at_save = merged(first, 2, "at_save")
    assert {k: v.tolist() for k, v in plain.state_dict().items()} == at_save
    # The unsplit model with those weights gives the pipeline's next loss.
    x, y = _models.batch(_ckpt_jobs.BATCH, seed=11)
    with torch.no_grad():
        ref = _models.loss_fn(plain(x), y).item()
    assert abs(ref - first[0][2]["losses"][10]) <= 1e-10 * abs(ref)


def test_a_checkpoint_from_p4_resumes_at_p1(saved):
    _, cfgs, first = saved
    pipe, sched = _ckpt_jobs.build(PLAIN, None, seed=5)
    info = pipe.load(cfgs[2]["dir"], scheduler=sched)
    assert info == {"step": 10, "saved_P": 4, "rng_restored": False}
    losses = _ckpt_jobs.train(pipe, sched, 10, 10)
    want = first[0][2]["losses"][10:]
    # Optimizer moments and the LR schedule came along: without them the
    # losses would part after a step.
    assert max(abs(a - b) / abs(b) for a, b in zip(losses, want)) <= 1e-10


def test_reshard_to_p2_and_a_crash_mid_save_keeps_the_last_checkpoint(saved, tmp_path):
    _, cfgs, first = saved
    crash = tmp_path / "crash"
    with pytest.raises(RankFailedError) as err:
        launch(_ckpt_jobs.reshard_then_crash_job, nprocs=2,
               args=(cfgs[2]["dir"], str(tmp_path), str(crash)))
    assert err.value.report.rank == 1 and "died" in err.value.report.summary
    want = first[0][2]["losses"][10:]
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["info"] == {"step": 10, "saved_P": 4, "rng_restored": False}
        assert max(abs(a - b) / abs(b) for a, b in zip(got["losses"], want)) <= 1e-10
    # The crash left the previous checkpoint intact, and a half-written rank file
    # that the save's journal names (the next save removes it).
    journal = json.loads((crash / ".conveyor-save.json").read_text())
    half = crash / journal["creates"][1]
    assert half.name.startswith("rank1.") and half.stat().st_size == 100
    assert half.name not in read_manifest(crash)["files"]
    saved_weights = {k: v for r in range(2) for k, v in
                     torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["saved"].items()}
    state = export_state_dict(crash)
    assert read_manifest(crash)["step"] == 20 and read_manifest(crash)["P"] == 2
    assert {k: v.tolist() for k, v in state.items()} == saved_weights


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        export_state_dict(tmp_path / "nothing")
    pipe, sched = _ckpt_jobs.build(PLAIN, None)
    pipe.save(tmp_path / "c", scheduler=sched)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["files"]
    deeper = Pipeline(_models.mlp(_ckpt_jobs.DEPTH + 1), loss_fn=_models.loss_fn,
                      optimizer=None, schedule="1f1b", microbatches=2)
    with pytest.raises(CheckpointError, match=r"lacks 2 names .*8\.weight"):
        deeper.load(tmp_path / "c")
    wider = _models.mlp(_ckpt_jobs.DEPTH)
    wider[6] = torch.nn.Linear(_models.WIDTH, 4).double()
    wider = Pipeline(wider, loss_fn=_models.loss_fn, optimizer=None, schedule="1f1b",
                     microbatches=2)
    with pytest.raises(CheckpointError,
                       match=r"does not fit stage 0: 6\.weight is \(3, 6\) there, \(4, 6\) here"):
        wider.load(tmp_path / "c")
    # A directory that is not a checkpoint is never replaced.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2\n")
    with pytest.raises(CheckpointError, match="not a conveyor checkpoint"):
        pipe.save(tmp_path / "other")
