"""Run by tests/runtime/test_launch.py under torchrun: every rank reports its
cores and each of its threads' cores, with LaunchOptions(pin=True). The same
``affinities`` serves the test under the local launcher."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conveyor.runtime import LaunchOptions, launch  # noqa: E402


def affinities(ctx):
    threads = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
    return {"rank": ctx.rank, "own": sorted(os.sched_getaffinity(0)), "threads": threads,
            "local_rank": int(os.environ["LOCAL_RANK"])}


if __name__ == "__main__":
    got = launch(affinities, nprocs=2, options=LaunchOptions(pin=True))
    if got is not None:
        Path(sys.argv[1]).write_text(json.dumps(got))
