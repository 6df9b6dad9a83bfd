"""The shared-memory transport (``PipelineConfig(transport="shm")``), real
processes: every schedule exact through it (P in {2, 4}, and in posting order
as NCCL pairs messages), none of its traffic on torch.distributed (only the
step's agreement and loss exchanges, a few hundred bytes), messages
that wrap around and stream through a small ring in both directions at once,
receives posted in any order, a size mismatch named, no file left in
/dev/shm, and a peer that leaves noticed at once instead of at the timeout.
"""

from __future__ import annotations

import glob
import subprocess
import sys

import pytest

from conveyor.errors import PipelineError
from conveyor.runtime import PipelineConfig, launch
from conveyor.runtime.transport.shm import check_platform
from conveyor.schedule import build_schedule, schedule_names
from tests.runtime import _jobs, _shm_jobs
from tests.runtime._procs import ROOT, env, free_port, why_failed

pytestmark = [pytest.mark.runtime,
              pytest.mark.skipif(check_platform() is not None, reason=str(check_platform()))]

TOL = 1e-10


@pytest.mark.parametrize("P,strict", [(2, False), (4, False), (4, True)])
def test_every_schedule_is_exact_over_shared_memory(P, strict):
    cfgs = [{"id": f"{name}-M{M}", "schedule": name, "M": M, "dtype": "float64", "batch": 16,
             "steps": 2, "depth": 8,
             "config": {"transport": "shm", "strict_order": strict}}
            for name in schedule_names() for M in (1, 3, 8)]
    rows = [r for per_rank in launch(_jobs.exactness_job, nprocs=P, args=(cfgs,))
            for r in per_rank]
    assert len(rows) == P * len(cfgs)
    for r in rows:
        where = f"{r['id']} rank {r['rank']}"
        assert max(r["loss_err"], r["grad_err"], r["param_err"]) <= TOL, where
        assert r["placement"] == list(build_schedule(r["id"].rsplit("-M", 1)[0], P,
                                                     int(r["id"].rsplit("-M", 1)[1])).placement)
    for cfg in cfgs:  # nothing of the pipeline's went through torch.distributed:
        for k in range(2):  # only the step's two small exchanges (agreement, loss)
            steps = [r["steps"][k] for r in rows if r["id"] == cfg["id"]]
            assert sum(s["p2p_bytes"] for s in steps) == _jobs.exchange_bytes(P), cfg["id"]
    for cfg in cfgs:  # the activations and gradients did cross: counted by the comm
        steps = [r["steps"][1] for r in rows if r["id"] == cfg["id"]]
        assert sum(s["sent_bytes"] for s in steps) == steps[0]["expected_cut_bytes"] > 0
        assert sum(s["recv_bytes"] for s in steps) == steps[0]["expected_cut_bytes"]


@pytest.mark.parametrize("order", ["as_sent", "reversed"])
def test_messages_stream_through_a_small_ring_both_ways(order):
    n = len(_shm_jobs._msgs(0))
    idx = list(range(n))
    if order == "reversed":  # the two tag-4 messages still pair in order
        idx = idx[::-1]
        a, b = idx.index(4), idx.index(5)
        idx[a], idx[b] = idx[b], idx[a]
    before = set(glob.glob("/dev/shm/conveyor-*"))
    rows = launch(_shm_jobs.exchange_job, nprocs=2, args=(idx,))
    for r in rows:
        assert r["equal"] == [True] * n, r
        assert r["done"]
        assert not set(r["left"]) - before, "the segment's file outlived the set-up"
    assert set(glob.glob("/dev/shm/conveyor-*")) <= before


def test_a_size_mismatch_is_named():
    msg = launch(_shm_jobs.mismatch_job, nprocs=2)[1]
    assert msg == "rank 0 sent 40 bytes with tag 5 to a receive of 48 bytes"


def test_a_peer_that_leaves_is_noticed_before_the_timeout():
    port = free_port()
    script = str(ROOT / "tests" / "runtime" / "_shm_peer_script.py")
    procs = [subprocess.Popen([sys.executable, script, str(r), str(port)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    out = [p.communicate(timeout=60)[0] for p in procs]
    assert procs[0].returncode == 0, why_failed(out[0])
    line = [ln for ln in out[0].splitlines() if ln.startswith("after ")]
    assert line, why_failed(out[0])
    secs, rest = line[0][len("after "):].split(" s: ", 1)
    assert rest == f"Connection closed by peer: rank 1's process {procs[1].pid} has exited"
    assert float(secs) < 30  # its timeout was 30 s: it was the exit that ended the wait


def test_bad_transport_names_the_choices():
    with pytest.raises(PipelineError, match=r"transport='tcp'; use 'dist' .* or 'shm'"):
        PipelineConfig(transport="tcp")
