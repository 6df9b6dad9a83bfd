"""Pinning a local rank to its own cores (``LaunchOptions(pin=True)``).

On CPU ranks the operating system moves a rank's threads between cores, and
two ranks (or a rank and a peer's transport thread) may share a core while
another stays idle. Pinned, each rank keeps the cores it was given, as the
cost model assumes: a core (or a set of cores) per rank. On the real-compute
planner benchmark (P = 2) pinning every thread took 1-3 ms off the steps of
schedules with one stage per rank and 5-16 ms off those with two
(benchmarks/planner.md); it does not remove their step-to-step spread.

The launcher pins a rank before it joins the process group: threads started
afterwards (gloo's transport thread, torch's intra-op pool) inherit the
mask, so every thread of the rank stays on its cores.
"""

from __future__ import annotations

import os

__all__ = ["cores_for", "pin_rank"]


def cores_for(local_rank: int, local_size: int, cores: list[int]) -> list[int]:
    """The cores of ``cores`` that local rank ``local_rank`` of ``local_size``
    gets: an equal block each when there are at least as many cores as ranks
    (the remainder unused), else one core, ranks wrapping around (shared)."""
    if not cores:
        return []
    if local_size <= len(cores):
        k = len(cores) // local_size
        return cores[local_rank * k:(local_rank + 1) * k]
    return [cores[local_rank % len(cores)]]


def pin_rank(local_rank: int, local_size: int) -> list[int] | None:
    """Pin this process (every thread it has and will start) to its block of
    the cores it may run on; the cores, or None where the platform cannot pin."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    mine = set(cores_for(local_rank, local_size, allowed))
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        tids = [str(os.getpid())]
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), mine)
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(os.sched_getaffinity(0))
