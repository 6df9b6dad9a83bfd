"""Checkpoints touch only what they wrote, follow a symlinked folder, and say
what is wrong with a damaged one.

In this process (a Pipeline without a process group is one rank: the save
and load code paths are those of every rank, without the collectives). The
kills during a save over real processes are in test_checkpoint_kill.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from conveyor.runtime import CheckpointPolicy, export_state_dict
from conveyor.runtime.procs import ckptdir
from conveyor.runtime.train import checkpoint_io
from conveyor.runtime.train.checkpoint_io import CheckpointError, read_manifest
from tests.runtime import _ckpt_jobs

PLAIN = {"schedule": "1f1b"}
RAW = ("PytorchStreamReader", "EOFError", "JSONDecodeError", "UnpicklingError:", "Traceback",
       "weights_only=False")


def _pipe(seed: int = 0, steps: int = 2):
    pipe, sched = _ckpt_jobs.build(PLAIN, None, seed=seed)
    _ckpt_jobs.train(pipe, sched, 0, steps)
    return pipe, sched


def _weights(pipe) -> dict[str, list]:
    return _ckpt_jobs.weights(pipe)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> its bytes (None for a folder; a link's target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (os.readlink(p).encode() if p.is_symlink() else
                    None if p.is_dir() else p.read_bytes())
    return out


def _ours(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(("rank", "manifest", ".conveyor")))


# -- nothing of the user's is removed ------------------------------------------------------

def test_no_save_removes_a_file_or_folder_conveyor_did_not_write(tmp_path):
    pipe, sched = _pipe()
    user = {  # what the old code deleted (X.old, X.tmp) and what a prune could touch
        "X.old/notes.txt": b"mine", "X.tmp/notes.txt": b"mine", "X.del": b"a file",
        "ckpt/step-00000001.del/u.txt": b"mine", "ckpt/step-00000002.tmp/u.txt": b"mine",
        "ckpt/step-00000003.old/u.txt": b"mine", "ckpt/step-00000099/u.txt": b"mine",
        "ckpt/notes/u.txt": b"mine", "ckpt/README": b"mine",
    }
    for rel, data in user.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    before = _tree(tmp_path)

    # first save, then repeated saves at the same path
    pipe.save(tmp_path / "X", scheduler=sched)
    (tmp_path / "X" / "rank0.pt").write_bytes(b"mine too")  # a user's file in our folder
    (tmp_path / "X" / "manifest.old").write_bytes(b"mine too")
    before.update({"X/rank0.pt": b"mine too", "X/manifest.old": b"mine too"})
    for _ in range(3):
        pipe.save(tmp_path / "X", scheduler=sched)
    assert len([n for n in os.listdir(tmp_path / "X") if n.endswith(".pt")]) == 2  # ours + user's

    # CheckpointPolicy: a save after every step, keeping one
    policy = CheckpointPolicy(tmp_path / "ckpt", every=1, keep=1)
    for k in range(2, 7):
        _ckpt_jobs.train(pipe, sched, k, 1)
        policy.save_if_due(pipe, scheduler=sched)
        if pipe.steps == 4:  # the user drops a file into a checkpoint that will be pruned
            (tmp_path / "ckpt/step-00000004/mine.txt").write_bytes(b"mine")
            before["ckpt/step-00000004/mine.txt"] = b"mine"
    after = _tree(tmp_path)
    lost = {k for k in before if k not in after or after[k] != before[k]}
    assert not lost, f"conveyor removed or changed what it did not write: {sorted(lost)}"
    # and what conveyor wrote is gone but for the newest checkpoint
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "README", "notes", "step-00000001.del", "step-00000002.tmp", "step-00000003.old",
        "step-00000004", "step-00000007", "step-00000099"]
    assert os.listdir(tmp_path / "ckpt/step-00000004") == ["mine.txt"]
    assert policy.latest() == tmp_path / "ckpt/step-00000007"
    assert len(_ours(tmp_path / "ckpt/step-00000007")) == 3  # marker, manifest, rank file


def test_a_folder_in_the_way_is_an_error_not_a_deletion(tmp_path):
    pipe, sched = _pipe()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "data.csv").write_text("1,2\n")
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match=r"'.*user' is not a conveyor checkpoint and holds "
                                              r"1 entry conveyor did not write \(data.csv\)"):
        pipe.save(tmp_path / "user")
    with pytest.raises(CheckpointError, match="afile': it is a file"):
        pipe.save(tmp_path / "afile")
    with pytest.raises(CheckpointError, match="dangling' is a symbolic link to .*nowhere', which "
                                              "does not exist"):
        pipe.save(tmp_path / "dangling")
    assert _tree(tmp_path) == before
    # An empty folder (made ahead, or a link's empty target) is taken, and kept: no prune
    # removes a folder conveyor did not make.
    (tmp_path / "empty").mkdir()
    pipe.save(tmp_path / "empty")
    assert json.loads((tmp_path / "empty" / ckptdir.MARKER).read_text())["made_folder"] is False
    assert ckptdir.remove(tmp_path / "empty") is False and os.listdir(tmp_path / "empty") == []


def test_a_symlinked_folder_keeps_pointing_to_its_target(tmp_path):
    pipe, sched = _pipe()
    target = tmp_path / "bigdisk" / "ckpt"
    target.mkdir(parents=True)
    link = tmp_path / "ckpt"
    os.symlink(target, link)
    for k in range(3):  # the old code failed from the second save on
        _ckpt_jobs.train(pipe, sched, 2 + k, 1)
        pipe.save(link, scheduler=sched)
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert read_manifest(link)["step"] == 3 + k
    assert sorted(os.listdir(tmp_path)) == ["bigdisk", "ckpt"]  # nothing beside the link
    assert len(_ours(target)) == 3
    fresh, fresh_sched = _ckpt_jobs.build(PLAIN, None, seed=9)
    assert fresh.load(link, scheduler=fresh_sched)["step"] == 5
    assert _weights(fresh) == _weights(pipe)  # float64 lists: equal means bit-equal


def test_a_save_that_fails_midway_keeps_the_last_and_the_next_save_clears_it(tmp_path,
                                                                             monkeypatch):
    pipe, sched = _pipe()
    d = tmp_path / "X"
    pipe.save(d, scheduler=sched)
    saved = _weights(pipe)
    good = _ours(d)
    _ckpt_jobs.train(pipe, sched, 2, 1)

    def half_then_fail(path, state):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint_io, "_write_rank_file", half_then_fail)
    with pytest.raises(OSError):
        pipe.save(d, scheduler=sched)
    monkeypatch.undo()
    # the last checkpoint is whole; the half file is named in the journal
    journal = json.loads((d / ckptdir.JOURNAL).read_text())
    half = [n for n in journal["creates"] if (d / n).exists()]
    assert len(half) == 1 and (d / half[0]).stat().st_size == 100
    assert read_manifest(d)["step"] == 2
    assert export_state_dict(d).keys() and set(_ours(d)) == set(good) | {ckptdir.JOURNAL, half[0]}
    fresh, s2 = _ckpt_jobs.build(PLAIN, None, seed=9)
    fresh.load(d, scheduler=s2)
    assert _weights(fresh) == saved
    (d / "notes.txt").write_text("mine")
    pipe.save(d, scheduler=sched)  # clears exactly what the failed save left
    assert read_manifest(d)["step"] == 3 and not (d / half[0]).exists()
    assert len(_ours(d)) == 3 and (d / "notes.txt").read_text() == "mine"


# -- every failed load names the path and the cause -----------------------------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    pipe, sched = _pipe()
    d = tmp_path_factory.mktemp("good") / "ckpt"
    pipe.save(d, scheduler=sched)
    return d


def _rank_file(d: Path) -> Path:
    return d / next(iter(read_manifest(d)["files"]))


def _edit_manifest(d: Path, **changes) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


def _truncate(d, keep):
    f = _rank_file(d)
    f.write_bytes(f.read_bytes()[:keep])


def _flip_pickle(d):
    f = _rank_file(d)
    b = bytearray(f.read_bytes())
    for k in range(80, 100):  # inside archive/data.pkl, the zip's first entry
        b[k] ^= 0xFF
    f.write_bytes(bytes(b))


def _old_format_truncated(d):  # a checkpoint written before sizes were recorded
    f = _rank_file(d)
    m = json.loads((d / "manifest.json").read_text())
    m.pop("sizes")
    (d / "manifest.json").write_text(json.dumps(m))
    f.write_bytes(f.read_bytes()[:300])


def _not_a_rank_file(d):
    f = _rank_file(d)
    torch.save([1, 2, 3], f)
    _edit_manifest(d, sizes={f.name: f.stat().st_size})


DAMAGE = [
    ("empty rank file", lambda d: _rank_file(d).write_bytes(b""), r"rank0\.\w+\.pt' is empty "
     r"\(0 bytes of the \d+ its save wrote\)"),
    ("truncated", lambda d: _truncate(d, 500), r"rank0\.\w+\.pt' is truncated: 500 bytes, its "
     r"save wrote \d+"),
    ("garbage, same size", lambda d: _rank_file(d).write_bytes(
        os.urandom(_rank_file(d).stat().st_size)), r"rank0\.\w+\.pt' is corrupt: \d+ bytes "
     r"without a whole zip archive"),
    ("pickle damaged", _flip_pickle, r"rank0\.\w+\.pt' is corrupt: its \d+ bytes hold a zip "
     r"archive whose contents do not load"),
    ("old format, truncated", _old_format_truncated, r"is truncated or corrupt: 300 bytes"),
    ("not a rank file", _not_a_rank_file, r"is not a conveyor rank file"),
    ("rank file missing", lambda d: _rank_file(d).unlink(), r"rank0\.\w+\.pt, which its "
     r"manifest names, cannot be read \(No such file or directory\)"),
    ("manifest broken", lambda d: (d / "manifest.json").write_text('{"format": '),
     r"checkpoint manifest '.*manifest.json' is not valid JSON"),
    ("manifest empty", lambda d: (d / "manifest.json").write_text(""),
     r"checkpoint manifest '.*manifest.json' is not valid JSON"),
    ("manifest deep", lambda d: (d / "manifest.json").write_text("[" * 10 ** 5 + "]" * 10 ** 5),
     r"manifest.json' nests JSON deeper than the parser follows"),
    ("manifest a list", lambda d: (d / "manifest.json").write_text("[]"),
     r"manifest.json' is not a JSON object"),
    ("another version", lambda d: _edit_manifest(d, version=2), r"is version 2 of "
     r"'conveyor-checkpoint'; this conveyor reads version 1"),
    ("another format", lambda d: _edit_manifest(d, format="dcp"), r"is format 'dcp', not "
     r"'conveyor-checkpoint'"),
    ("files not a dict", lambda d: _edit_manifest(d, files=[1]), r"'files' is \[1\], not a "
     r"dict"),
    ("a path in files", lambda d: _edit_manifest(d, files={"../x.pt": []}), r"file entry "
     r"'\.\./x\.pt' is not a file of the folder"),
    ("no manifest", lambda d: (d / "manifest.json").unlink(), r"no checkpoint at '.*ckpt': it "
     r"holds no manifest.json: its first save did not finish"),
]


@pytest.mark.parametrize("damage, match", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_a_damaged_checkpoint_says_which_file_and_why(good, tmp_path, damage, match):
    d = tmp_path / "ckpt"
    shutil.copytree(good, d)
    damage(d)
    pipe, sched = _ckpt_jobs.build(PLAIN, None, seed=9)
    for load in (lambda: pipe.load(d, scheduler=sched), lambda: export_state_dict(d)):
        with pytest.raises(CheckpointError) as info:
            load()
        text = str(info.value)
        assert str(d) in text, text  # the path
        assert re.search(match, text), (match, text)
        assert not any(raw in text for raw in RAW), text
        e = info.value  # no reader's error chained below ours either
        assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
