"""Start one process per pipeline rank and collect what each returns.

``launch(fn, nprocs=P)`` is the one call a script makes. Run as
``python script.py`` it starts P processes on loopback and returns their
results in the parent; run under ``torchrun`` (one node or many) it calls
``fn`` in the process torchrun started. Either way ``fn(ctx, *args)`` runs once
per rank with a ``RankContext`` and an initialised process group.

A failing rank never leaves the others hanging:

* locally, the parent watches every child; when one reports a failure (or
  dies), the parent waits a moment for the report of the cause, then
  terminates the survivors and raises ``RankFailedError`` with that report, so
  the cause is printed once, by the parent;
* under torchrun, the failing rank prints its report and exits at once without
  tearing down the process group, which closes its connections: peers blocked
  on it get "connection closed" immediately, and torchrun's agent stops the
  rest. The process-group timeout bounds anything else.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

from conveyor.errors import PipelineError
from conveyor.runtime.errors import FailureReport, RankFailedError, report_of

__all__ = ["launch", "LaunchOptions"]


@dataclass(frozen=True)
class LaunchOptions:
    """How ranks are started; all fields have working defaults.

    backend:    "gloo" or "nccl"; None picks NCCL when CUDA is present.
    timeout_s:  process-group timeout: the longest any rank waits on a peer.
    threads:    torch intra-op threads per rank; None: CPU count / ranks (at
                least 1), so P ranks do not oversubscribe the cores.
    grace_s:    after the first failure, how long the launcher waits for the
                failing rank's report before it stops the other ranks.
    deadline_s: optional wall-clock limit for the whole local run.
    """

    backend: str | None = None
    timeout_s: float = 300.0
    threads: int | None = None
    grace_s: float = 1.0
    deadline_s: float | None = None


def launch(fn: Callable[..., Any], *, nprocs: int, args: tuple = (), kwargs: dict | None = None,
           options: LaunchOptions | None = None) -> list[Any] | None:
    """Run ``fn(ctx, *args, **kwargs)`` on every pipeline rank.

    ``fn`` must be importable (defined at module level) because local ranks are
    fresh processes (the "spawn" start method), and the script must guard its
    entry point with ``if __name__ == "__main__":``.

    Returns the list of per-rank return values, in rank order, where the
    script is the driver: in the parent of a local run, and on rank 0 under
    torchrun. Other torchrun ranks get None. Under torchrun, ``nprocs`` is
    ignored: torchrun's world size is the pipeline's P.

    Raises RankFailedError (locally) naming the failing rank, stage,
    micro-batch and the original error. Under torchrun a failing rank prints
    that report and exits with code 1.
    """
    from conveyor.runtime.group import env_is_distributed

    options = options or LaunchOptions()
    kwargs = kwargs or {}
    if os.environ.get("CONVEYOR_LOCAL_CHILD") != "1" and env_is_distributed():
        return _run_under_torchrun(fn, args, kwargs, options)
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise PipelineError(f"nprocs must be a positive integer (one process per pipeline "
                            f"rank), got {nprocs!r}")
    return _run_local(fn, nprocs, args, kwargs, options)


# -- torchrun ---------------------------------------------------------------------

def _run_under_torchrun(fn, args, kwargs, options: LaunchOptions):
    import torch
    import torch.distributed as dist

    from conveyor.runtime.group import init_rank

    rank = int(os.environ["RANK"])
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        ctx = init_rank(backend=options.backend, timeout_s=options.timeout_s,
                        launcher="torchrun")
        value = fn(ctx, *args, **kwargs)
        _leave_together(rank)
        gathered = [None] * ctx.world_size if rank == 0 else None
        dist.gather_object(value, gathered, dst=0)
        # Tear the group down only once everyone is done with it: a rank that
        # exits with the group alive, or while a peer still talks to it, can
        # abort in gloo's destructor.
        _leave_together(rank)
    except BaseException as e:  # noqa: BLE001 - every failure must end this rank
        _die(report_of(e, rank=rank))
    dist.destroy_process_group()
    return gathered


def _leave_together(rank: int) -> None:
    """Barrier at the end of a rank's work, so that no rank exits while a peer
    still receives from it. A peer that failed meanwhile shows up here."""
    import torch.distributed as dist

    from conveyor.runtime.errors import PeerFailedError

    try:
        dist.barrier()
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PeerFailedError(f"rank {rank} finished, but a peer did not ({first}); the "
                              f"failing rank reports the cause", rank=rank) from e


def _die(report: FailureReport) -> None:
    """Print this rank's report (the cause in full, a lost peer as one line)
    and leave without tearing down the process group, which could block on the
    failed peer."""
    if report.kind == "cause" or (report.kind == "same" and report.rank == 0):
        print(f"conveyor: {report.text()}", file=sys.stderr)
    elif report.kind == "peer":
        print(f"conveyor: {report.summary}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


# -- local ------------------------------------------------------------------------

def _child_main(rank: int, nprocs: int, port: int, fn, args, kwargs, conn,
                options: LaunchOptions) -> None:
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        # The parent hosts the store (as torchrun's agent does): connect as clients.
        "TORCHELASTIC_USE_AGENT_STORE": "True", "CONVEYOR_LOCAL_CHILD": "1",
    })
    code = 1
    try:
        import torch

        from conveyor.runtime.group import init_rank

        torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) // nprocs))
        ctx = init_rank(backend=options.backend, timeout_s=options.timeout_s, launcher="local")
        value = fn(ctx, *args, **kwargs)
        _leave_together(rank)
        try:
            conn.send(("ok", value))
            code = 0
        except Exception as e:  # an unpicklable return value
            conn.send(("fail", FailureReport(
                rank=rank, kind="cause", error_type=type(e).__name__,
                summary=f"rank {rank} returned a value the launcher cannot receive "
                        f"({type(e).__name__}: {e}); return plain data (numbers, lists, "
                        f"dicts, tensors)").to_dict()))
    except BaseException as e:  # noqa: BLE001 - report every failure to the parent
        try:
            conn.send(("fail", report_of(e, rank=rank).to_dict()))
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: destroying a process group whose peer failed
    # can block, and the parent already has everything it needs.
    os._exit(code)


def _run_local(fn, nprocs: int, args, kwargs, options: LaunchOptions) -> list[Any]:
    from torch.distributed import TCPStore

    # Port 0: the OS picks a free port, and the store keeps it bound until the
    # run ends, so concurrent runs cannot collide.
    store = TCPStore("127.0.0.1", 0, world_size=nprocs, is_master=True,
                     wait_for_workers=False)
    spawn = mp.get_context("spawn")
    procs, conns = [], []
    try:
        for r in range(nprocs):
            recv_end, send_end = spawn.Pipe(duplex=False)
            p = spawn.Process(target=_child_main, name=f"conveyor-rank{r}",
                              args=(r, nprocs, store.port, fn, args, kwargs, send_end, options))
            p.start()
            send_end.close()
            procs.append(p)
            conns.append(recv_end)
        return _collect(procs, conns, options)
    finally:
        _stop(procs)
        for c in conns:
            c.close()
        del store


def _collect(procs, conns, options: LaunchOptions) -> list[Any]:
    n = len(procs)
    results: list[Any] = [None] * n
    finished = [False] * n   # sent its result
    messaged = [False] * n   # sent a result or a report
    exited = [False] * n
    closed = [False] * n     # its pipe hit end-of-file
    reports: list[FailureReport] = []
    failed_at = None
    start = time.monotonic()

    def read(r: int) -> bool:
        nonlocal failed_at
        try:
            status, payload = conns[r].recv()
        except (EOFError, OSError):
            closed[r] = True
            return False  # closed without a message: the sentinel tells how it ended
        messaged[r] = True
        if status == "ok":
            results[r], finished[r] = payload, True
        else:
            reports.append(FailureReport(**payload))
            failed_at = failed_at or time.monotonic()
        return True

    while not all(finished):
        now = time.monotonic()
        if failed_at is not None and (now - failed_at > options.grace_s
                                      or any(r.kind == "cause" for r in reports)):
            break
        if options.deadline_s is not None and now - start > options.deadline_s:
            reports.append(FailureReport(
                rank=-1, kind="cause", summary=f"the run took longer than its deadline of "
                f"{options.deadline_s:g} s; stopped all ranks"))
            break
        waitables = [c for r, c in enumerate(conns) if not (messaged[r] or exited[r] or closed[r])]
        waitables += [p.sentinel for r, p in enumerate(procs) if not exited[r]]
        for obj in mp_wait(waitables, timeout=0.2):
            r = next((i for i, c in enumerate(conns) if c is obj), None)
            if r is not None:
                read(r)
                continue
            r = next(i for i, p in enumerate(procs) if p.sentinel is obj)
            exited[r] = True
            procs[r].join(0.5)
            if not (messaged[r] or closed[r]) and conns[r].poll():
                read(r)
            if not messaged[r]:
                from conveyor.runtime.hang import EXIT_CODE as HANG  # the report is printed
                reports.append(FailureReport(
                    rank=r, kind="cause", summary=f"rank {r} died (exit code "
                    f"{procs[r].exitcode}) without reporting an error; look for a crash "
                    f"(segmentation fault, out of memory, os._exit) in its output"
                    if procs[r].exitcode != HANG else f"rank {r} stopped on a hang (exit "
                    f"code {HANG}); the table above shows where every rank was"))
                failed_at = failed_at or time.monotonic()
    if reports:
        raise RankFailedError(_primary(reports), reports)
    return results


def _primary(reports: list[FailureReport]) -> FailureReport:
    """The report of the cause: a rank's own error before a lost peer; among
    errors every rank hit the same way, the lowest rank's."""
    for kinds in (("cause",), ("same",), ("peer",)):
        found = [r for r in reports if r.kind in kinds]
        if found:
            return min(found, key=lambda r: r.rank) if kinds == ("same",) else found[0]
    return reports[0]


def _stop(procs) -> None:
    """Terminate, then kill, every child still running, and reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
