"""Keep other cores computing while the layers are timed (``profile(alongside=N)``):
cores that compute at once slow each other down, as the other ranks of a run
on the same host do."""

from __future__ import annotations

import torch

from conveyor.errors import PlanError
from conveyor.measure.chain import _warm_up


def _busy_cores(n: int, layers, batch, device):
    """A context in which ``n`` forked processes run the model's forward and
    backward over and over, each pinned to a core of its own, this process
    pinned to another (its affinity is restored after)."""
    import contextlib
    import os
    import signal

    from conveyor.runtime.procs.lifetime import die_with_parent

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PlanError(f"alongside={n!r}; use an integer >= 0 (other processes computing "
                        f"while the layers are timed, P - 1 for a run of P ranks on this host)")
    if n == 0:
        return contextlib.nullcontext()
    if device.type != "cpu" or not hasattr(os, "sched_setaffinity") or not hasattr(os, "fork"):
        raise PlanError(f"alongside={n} runs other processes on this machine's other cores; it "
                        f"needs CPU layers on Linux (this is {device}); leave it at 0")
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores) - 1:
        raise PlanError(f"alongside={n} needs {n + 1} cores, one each, but this process may use "
                        f"{len(cores)}; use at most alongside={len(cores) - 1}")

    @contextlib.contextmanager
    def busy():
        parent, kids = os.getpid(), []
        try:
            for k in range(1, n + 1):
                pid = os.fork()
                if pid == 0:  # the child: compute until killed or orphaned, never return
                    try:
                        die_with_parent(parent)
                        os.sched_setaffinity(0, {cores[k]})
                        torch.set_num_threads(1)
                        while os.getppid() == parent:
                            _warm_up(layers, batch, device, 1)
                    finally:
                        os._exit(0)
                kids.append(pid)
            os.sched_setaffinity(0, {cores[0]})
            _warm_up(layers, batch, device, 1)  # with the others running
            yield
        finally:
            os.sched_setaffinity(0, set(cores))
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass

    return busy()
