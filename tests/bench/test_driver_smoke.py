"""The harness end to end: real processes over gloo, one tiny case.

Asserts content, not speed: each framework produces a row with a positive step
time, the bytes that crossed the cut are exactly 2 * M * activation bytes
(forward plus backward, nothing else), GPipe held all M micro-batches, and the
separate RSS run reported for both.
"""

import pytest

from benchmarks.harness.config import EmulatedWorkload, RunSettings
from benchmarks.harness.driver import run_benchmark

WORKLOAD = EmulatedWorkload(forward=0.002, backward=0.004, width=64, mb_size=2)
ACT = 2 * 64 * 4  # one micro-batch's activation at the cut, float32


@pytest.mark.runtime
def test_both_frameworks_measured_with_exact_bytes():
    seen = []
    result = run_benchmark(workload=WORKLOAD, Ps=[2], Ms=[3], schedules=["gpipe"],
                           settings=RunSettings(repeats=1, warmup=1, timeout=120),
                           on_progress=seen.append)
    rows = {r["framework"]: r for r in result["rows"]}
    assert set(rows) == {"conveyor", "torch"}
    for row in rows.values():
        assert row["step_s"] > 0 and row["ideal_s"] > 0
        assert row["bytes"] == row["bytes_expected"] == 2 * 3 * ACT
        assert row["peak_activations"] == [3, 3]
        assert len(row["rss_peak_mib"]) == 2 and min(row["rss_peak_mib"]) > 0
    assert rows["conveyor"]["own_bytes"] == rows["conveyor"]["bytes"]
    assert seen == ["gpipe P=2 M=3"]
