"""A small local launcher for benchmark workers: P processes over gloo on loopback.

It exists so the torch.distributed.pipelining side runs without conveyor's
runtime, and both sides can run inside the same process group. Each rank calls
``fn(rank, P, payload, progress)`` and returns a picklable result. The parent
collects the results, forwards progress messages, and on any failure stops the
other ranks and raises BenchError carrying the failing rank's error: nothing
is left behind and nothing hangs past ``timeout``.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from contextlib import closing
from typing import Any, Callable

from conveyor.bench.config import BenchError

__all__ = ["free_port", "launch", "MEMORY_ENV"]

WORKER_ENV = {"OMP_NUM_THREADS": "1"}
# For memory runs: glibc serves allocations over 64 KiB by mmap and returns them
# on free, so RSS follows what a process holds instead of its high-water mark.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, P, port, payload, results, progress, timeout, backend):
    import datetime

    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(P), LOCAL_RANK=str(rank))
        if backend == "nccl":
            import torch

            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, rank=rank, world_size=P,
                                timeout=datetime.timedelta(seconds=timeout))
        out = fn(rank, P, payload, progress)
        results.put((rank, "ok", out))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        results.close()
        results.join_thread()  # the report must be out before the process is
        os._exit(1)  # don't wait on peers that will never answer
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


def launch(fn: Callable[[int, int, Any, Any], Any], P: int, payload: Any, *,
           timeout: float = 900.0, backend: str = "gloo", env: dict | None = None,
           on_progress: Callable[[Any], None] | None = None) -> list[Any]:
    """Run ``fn`` on P local processes and return their results by rank.

    ``fn`` must be importable (a module-level function); ``payload`` is passed
    to every rank. ``backend`` is "gloo" (CPU) or "nccl" (CUDA; rank r uses
    GPU r modulo the GPUs present). ``env`` adds environment variables for
    the ranks (read at their start-up, e.g. MEMORY_ENV). Messages that a rank puts on its ``progress`` queue are
    handed to ``on_progress`` in the parent as they arrive.

    Raises BenchError naming the failing rank and its error when a rank
    raises or dies, or when the run takes longer than ``timeout`` seconds.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results, progress = ctx.Queue(), ctx.Queue()
    port = free_port()
    extra = {**WORKER_ENV, **(env or {})}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # inherited at spawn
    procs = []
    try:
        for rank in range(P):
            p = ctx.Process(target=_worker, name=f"conveyor-bench-rank{rank}", daemon=True,
                            args=(fn, rank, P, port, payload, results, progress, timeout,
                                  backend))
            p.start()
            procs.append(p)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < P:
            _drain(progress, on_progress)
            try:
                rank, status, value = results.get(timeout=0.1)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    r = procs.index(dead[0])
                    raise BenchError(f"benchmark rank {r} of {P} died with exit code "
                                     f"{dead[0].exitcode} before reporting; rerun, and check "
                                     f"memory (each rank holds a model copy)")
                if time.monotonic() > deadline:
                    raise BenchError(f"benchmark with P={P} did not finish within {timeout:.0f}"
                                     f" s; raise the timeout or lower M and repeats")
                continue
            if status == "error":
                first = value.strip().splitlines()[0]
                err = BenchError(f"benchmark rank {rank} of {P} failed: {first}")
                err.detail = value  # the rank's traceback, for --verbose and logs
                raise err
            out[rank] = value
        _drain(progress, on_progress)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(P)]


def _drain(progress, on_progress) -> None:
    while True:
        try:
            msg = progress.get_nowait()
        except queue.Empty:
            return
        if on_progress is not None:
            on_progress(msg)
