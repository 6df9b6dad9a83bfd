"""A rank failing while it decodes ends every rank, as in training: the
failing rank names its stage, lane and token; its peer, blocked in a
receive, learns it lost the rank; no process is left."""

from __future__ import annotations

import time

import pytest

from conveyor.runtime import RankFailedError, launch
from tests.runtime import _generate_jobs
from tests.runtime._procs import alive

pytestmark = pytest.mark.runtime


def test_a_rank_failing_mid_generation_ends_every_rank(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        launch(_generate_jobs.fail_job, nprocs=2, args=(str(tmp_path),))
    # Bounded generously: the machine is shared; the peer's receive fails as
    # soon as the failing process is gone, far below the 60 s timeout.
    assert time.monotonic() - t0 < 60
    err = info.value
    assert err.rank == 1
    assert ("rank 1 (stage 1) failed in the forward of lane 0 (the step to token 3 of 8) while generating: "
            "RuntimeError: boom in call 3") in str(err)
    kinds = {r.rank: r.kind for r in err.reports}
    assert kinds[1] == "cause" and kinds.get(0, "peer") == "peer"
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "ranks left running"
