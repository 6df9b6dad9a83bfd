"""The same script runs under the local launcher and under torchrun, unchanged."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conveyor.runtime import launch
from tests.runtime._procs import ROOT, env

pytestmark = pytest.mark.runtime

EXAMPLE = ROOT / "examples" / "train_mlp.py"


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180)


def losses(out: str) -> list[str]:
    return re.findall(r"^epoch \d+ loss ([0-9.]+)$", out, re.M)


def test_example_runs_under_torchrun_and_the_local_launcher_alike():
    tr = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", str(EXAMPLE)])
    assert tr.returncode == 0, tr.stderr[-3000:]
    assert "launcher: torchrun, ranks: 2" in tr.stdout
    assert tr.stdout.count("launcher:") == 1  # only rank 0 (the driver) prints
    local = run([sys.executable, str(EXAMPLE)])
    assert local.returncode == 0, local.stderr[-3000:]
    assert "launcher: local, ranks: 2" in local.stdout
    got = losses(tr.stdout)
    assert len(got) == 3 and got == losses(local.stdout)  # same batches, same arithmetic
    assert float(got[-1]) < float(got[0])
    acc = float(re.search(r"train accuracy: ([0-9.]+)%", tr.stdout).group(1))
    assert acc > 80


def _whoami(ctx, tag):
    import torch.distributed as dist
    return (tag, ctx.rank, ctx.world_size, dist.get_backend(), os.environ["MASTER_PORT"])


def test_two_local_runs_at_once_do_not_collide():
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda args: launch(_whoami, nprocs=args[1], args=(args[0],)),
                        [("a", 2), ("b", 2)])
    # Results come back in rank order, each run on its own store port.
    assert [r[:4] for r in a] == [("a", r, 2, "gloo") for r in range(2)]
    assert [r[:4] for r in b] == [("b", r, 2, "gloo") for r in range(2)]
    assert a[0][4] != b[0][4]


def _model():
    from tests.runtime import _models
    return _models.mlp(4)


def _batch(step):
    from tests.runtime import _models
    return _models.batch(12, seed=step)


def test_measure_returns_recorded_timelines_with_bytes_and_memory():
    from conveyor.runtime import measure
    from tests.runtime import _models

    timelines = measure(_model, _batch, P=2, microbatches=4, schedule="gpipe", steps=2, warmup=1)
    assert len(timelines) == 2
    for tl in timelines:
        assert (tl.source, tl.schedule, tl.P, tl.M) == ("measured", "gpipe", 2, 4)
        ranks = tl.meta["ranks"]
        # One cut of (n, WIDTH) float64 activations, both ways, over 12 samples.
        assert sum(r["sent_bytes"] for r in ranks) == 2 * 12 * _models.WIDTH * 8
        assert all(r["meta_bytes"] == 0 for r in ranks)  # the handshake was in warm-up
        assert all(r["peak_activation_bytes"] > 0 for r in ranks)
        # GPipe keeps all 4 micro-batches of rank 0 in flight.
        assert tl.peak_activations()[0] == 4


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"),
                    reason="needs Linux CPU affinity")
def test_pin_puts_every_thread_of_a_rank_on_its_own_cores():
    from conveyor.runtime import LaunchOptions
    from conveyor.runtime.procs.affinity import cores_for
    from tests.runtime._pin_script import affinities

    allowed = sorted(os.sched_getaffinity(0))
    got = launch(affinities, nprocs=2, options=LaunchOptions(pin=True))
    for r, row in enumerate(got):
        want = cores_for(r, 2, allowed)
        assert row["rank"] == r and row["own"] == want
        assert len(row["threads"]) > 1  # gloo's thread at least, besides the main one
        assert all(cores == want for cores in row["threads"].values())
    if len(allowed) >= 2:
        assert not set(got[0]["own"]) & set(got[1]["own"])
    unpinned = launch(affinities, nprocs=2)
    assert all(row["own"] == allowed for row in unpinned)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"),
                    reason="needs Linux CPU affinity")
def test_ranks_keep_freed_memory_unless_told_not_to():
    """With the heap kept (the default) a 30 MiB block comes from the heap
    and 160 MiB of small tensors filled and freed round after round reuse
    their pages (no page faults after the first round); without, the block
    gets a mapping of its own, returned to the system when freed."""
    from conveyor.runtime import LaunchOptions
    from tests.runtime._pin_script import heap_use

    kept = launch(heap_use, nprocs=2)
    given_back = launch(heap_use, nprocs=2, options=LaunchOptions(keep_heap=False))
    for rank in range(2):
        assert kept[rank]["heap"] and not given_back[rank]["heap"]
        assert kept[rank]["faults"][0] > 20000 > 1000 > max(kept[rank]["faults"][1:]), kept


def test_pin_under_torchrun_uses_the_local_rank(tmp_path):
    from conveyor.runtime.procs.affinity import cores_for

    out = tmp_path / "aff.json"
    done = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", str(ROOT / "tests" / "runtime" / "_pin_script.py"),
                str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    allowed = sorted(os.sched_getaffinity(0))
    for r, row in enumerate(json.loads(out.read_text())):
        want = cores_for(row["local_rank"], 2, allowed)
        assert row["rank"] == r and row["own"] == want
        assert len(row["threads"]) > 1 and all(c == want for c in row["threads"].values())


def test_cores_for_blocks_and_wraps():
    from conveyor.runtime.procs.affinity import cores_for

    assert [cores_for(r, 2, [0, 1, 2, 3, 4]) for r in range(2)] == [[0, 1], [2, 3]]
    assert [cores_for(r, 3, [4, 5]) for r in range(3)] == [[4], [5], [4]]
    assert cores_for(0, 1, []) == []
