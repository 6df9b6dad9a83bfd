"""A rank failing while it decodes ends every rank, as in training: the
failing rank names its stage, lane and token; its peer, blocked in a
receive, learns it lost the rank; no process is left."""

from __future__ import annotations

import re
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


def test_a_rank_stuck_mid_generation_is_named_by_the_hang_watch(tmp_path, capfd):
    """The decode loop's actions and waits are under the same hang watch as a
    step's: past timeout_s (twice that for a process's first call), one
    table names every rank's position and every process exits."""
    from conveyor.runtime.procs.hang import EXIT_CODE

    with pytest.raises(RankFailedError) as info:
        launch(_generate_jobs.hang_job, nprocs=2, args=(str(tmp_path), 2.0))
    assert f"stopped on a hang (exit code {EXIT_CODE})" in str(info.value)
    err = capfd.readouterr().err
    assert err.count("conveyor: hang:") == 1, err[-3000:]
    table = err[err.index("conveyor: hang:"):].splitlines()
    rows = {int(m.group(1)): line for line in table if (m := re.match(r"(\d)\s{2,}", line))}
    # Rank 1 is busy in round 2's forward of its stage (virtual stage 2*2 + 1);
    # rank 0 waits on it for round 3's token (virtual stage 6) over the loop cut.
    assert re.search(r"^1\s+busy\s+\S+\s+[\d.]+ s\s+5F0 \(forward", rows[1]), rows[1]
    assert re.search(r"^0\s+waiting\s+1\s", rows[0]), rows[0]
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids) == 2 and not [p for p in pids if alive(p)]
