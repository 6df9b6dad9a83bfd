"""Run by tests/runtime/test_launch.py under torchrun: every rank reports its
cores and each of its threads' cores, with LaunchOptions(pin=True). The same
``affinities`` serves the test under the local launcher, and ``heap_use``
the test of LaunchOptions(keep_heap=...)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conveyor.runtime import LaunchOptions, is_driver, launch  # noqa: E402


def affinities(ctx):
    threads = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
    return {"rank": ctx.rank, "own": sorted(os.sched_getaffinity(0)), "threads": threads,
            "local_rank": int(os.environ["LOCAL_RANK"])}


def heap_use(ctx) -> dict:
    """Whether a 30 MiB tensor comes from the heap (glibc's mmap threshold
    raised to 32 MiB) or a mapping of its own (the default threshold, 128 KiB
    in a fresh process); and the minor page faults in each of 6 rounds of
    filling 2560 tensors of 64 KiB and freeing them all, as a step's
    activations come and go."""
    import resource

    import torch

    big = torch.ones(30 << 18)
    ptr = big.data_ptr()
    heap = False
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            heap = heap or lo <= ptr < hi
    del big
    faults = []
    for _ in range(6):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        held = [torch.ones(1 << 14) for _ in range(2560)]
        del held
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"heap": heap, "faults": faults}


if __name__ == "__main__":
    got = launch(affinities, nprocs=2, options=LaunchOptions(pin=True))
    if is_driver():
        Path(sys.argv[1]).write_text(json.dumps(got))
