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

Nothing outlives the caller, and nothing listens beyond loopback:

* each local rank asks the kernel for SIGKILL when its parent dies
  (PR_SET_PDEATHSIG on Linux), so a SIGKILL of the script leaves no rank
  behind (under torchrun the same holds for its agent); SIGTERM and SIGHUP sent to the script are forwarded: the parent stops
  and reaps its ranks, then dies of the same signal;
* the rendezvous store is served from a socket bound to 127.0.0.1, and the
  ranks' gloo listeners bind the loopback interface.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

from conveyor.errors import PipelineError
from conveyor.runtime.procs.affinity import pin_rank
from conveyor.runtime.procs.heap import keep_freed_memory
from conveyor.runtime.errors import FailureReport, RankFailedError, death_summary, report_of
from conveyor.runtime.procs.lastwords import ENV as LAST_WORDS, read as read_last_words
from conveyor.runtime.procs.lastwords import make_dir as make_last_words, remove_dir
from conveyor.runtime.procs.torchrun import leave_together, run_under_torchrun, to_cpu
from conveyor.runtime.procs.lifetime import (
    Signalled, die_with_parent, forward_signals, loopback_interface, loopback_store,
)

__all__ = ["launch", "LaunchOptions", "is_driver"]

NO_MAIN_GUARD = 76  # a rank's exit code when its script called launch() at import


def _no_guard(rank: int) -> FailureReport:
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the script"
    return FailureReport(
        rank=rank, kind="same", summary=(
            f"rank {rank} could not start: {main} calls launch() when it is imported, "
            f"without the `if __name__ == \"__main__\":` guard. Each rank is a new Python "
            f"process that imports the script to find the function it runs, and would launch "
            f"again; put the launch() call under `if __name__ == \"__main__\":`"))


@dataclass(frozen=True)
class LaunchOptions:
    """How ranks are started; all fields have working defaults.

    backend:    "gloo" or "nccl"; None picks NCCL when CUDA is present.
    timeout_s:  process-group timeout: bounds rendezvous and every collective
                outside a pipeline step (building the model, checkpoint
                save/load barriers), so it is longer than a step's waits
                (PipelineConfig.timeout_s, 60 s; 120 s on the first step).
    threads:    torch intra-op threads per rank; None: CPU count / ranks (at
                least 1), so P ranks do not oversubscribe the cores.
    grace_s:    after the first failure, how long the launcher waits for the
                failing rank's report before it stops the other ranks.
    deadline_s: optional wall-clock limit for the whole local run.
    max_restarts: local runs only: when a rank fails, stop every rank and
                start them all again, up to this many times, as
                ``torchrun --max-restarts`` does (each attempt sees its number
                in TORCHELASTIC_RESTART_COUNT; see conveyor.runtime.procs.elastic).
                A failure every rank met identically (a bad argument) is not
                retried. Under torchrun, pass --max-restarts to torchrun.
    pin:        pin each rank on this machine, every thread of it, to its own
                block of the cores the launcher may use (local rank r of n
                gets cores r*k .. r*k+k-1, k = cores // n; with more ranks
                than cores, one core each, shared). Off by default; on CPU
                ranks it keeps each rank off the others' cores
                (conveyor.runtime.procs.affinity).
    keep_heap:  each rank's C heap keeps the memory a step frees for the
                next step instead of returning it to the system and taking
                a page fault per 4 KiB the next step touches again
                (conveyor.runtime.procs.heap); a rank then holds on to its peak
                heap use. On by default.
    """

    backend: str | None = None
    timeout_s: float = 300.0
    threads: int | None = None
    grace_s: float = 1.0
    deadline_s: float | None = None
    max_restarts: int = 0
    pin: bool = False
    keep_heap: bool = True

    def __post_init__(self) -> None:
        from conveyor.runtime.checks import check_launch_options

        check_launch_options(self)


def launch(fn: Callable[..., Any], *, nprocs: int, args: tuple = (), kwargs: dict | None = None,
           options: LaunchOptions | None = None) -> list[Any]:
    """Run ``fn(ctx, *args, **kwargs)`` on every pipeline rank.

    ``fn`` must be importable (defined at module level) because local ranks are
    fresh processes (the "spawn" start method), and the script must guard its
    entry point with ``if __name__ == "__main__":``.

    Data parallel x pipeline parallel: ``nprocs`` counts every process,
    dp x P; ``ctx`` describes the whole world and ``Pipeline(..., ctx=ctx,
    dp=N)`` splits it (global rank d*P + p is pipeline rank p of replica d).

    Returns the list of every rank's return value, in rank order, under
    both launchers: in the parent of a local run, and on every rank under
    torchrun (the values are gathered to all ranks), so a script that
    indexes the list runs unchanged under either. Code after ``launch`` runs
    once locally but once per rank under torchrun: guard what should happen
    once (printing, writing a file) with ``is_driver()``. Under torchrun,
    ``nprocs`` is ignored: torchrun's world size is the pipeline's P.

    Raises RankFailedError (locally) naming the failing rank, stage,
    micro-batch and the original error (of the last attempt, with
    ``options.max_restarts``). Under torchrun a failing rank prints that
    report and exits with code 1.
    """
    from conveyor.runtime.transport.group import env_is_distributed

    from conveyor.limits import MAX_P

    if getattr(mp.process.current_process(), "_inheriting", False):
        # A rank being spawned re-runs the script to find ``fn`` and met this
        # call at its top level: the script lacks the __main__ guard. Leave
        # with a code the launcher names, instead of multiprocessing's
        # bootstrapping traceback in every rank.
        os._exit(NO_MAIN_GUARD)
    options = options or LaunchOptions()
    kwargs = kwargs or {}
    if not callable(fn):
        raise PipelineError(f"launch needs a function ctx -> result, got {fn!r}")
    if not isinstance(options, LaunchOptions):
        raise PipelineError(f"options={options!r}; pass LaunchOptions(...)")
    if os.environ.get("CONVEYOR_LOCAL_CHILD") != "1" and env_is_distributed():
        return run_under_torchrun(fn, args, kwargs, options)
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or not 1 <= nprocs <= MAX_P:
        raise PipelineError(f"nprocs must be an integer in 1..{MAX_P} (one process per "
                            f"pipeline rank), got {nprocs!r}")
    from conveyor.runtime.procs.elastic import with_restarts

    return with_restarts(lambda attempt: _run_local(fn, nprocs, args, kwargs, options, attempt),
                         max_restarts=options.max_restarts, nprocs=nprocs)


def is_driver() -> bool:
    """True in the process that should print a run's summary once: the
    script that called ``launch`` in a local run (not its rank processes),
    global rank 0 under torchrun, and a plain script with no launcher. Under
    torchrun every rank returns from ``launch`` with the same results, so
    ``if is_driver(): print(...)`` prints once under both launchers."""
    if os.environ.get("CONVEYOR_LOCAL_CHILD") == "1":
        return False  # a rank the local launcher started
    return os.environ.get("RANK", "0") == "0"


# -- local ------------------------------------------------------------------------

def _child_main(rank: int, nprocs: int, port: int, fn, args, kwargs, conn,
                options: LaunchOptions, parent_pid: int, attempt: int = 0,
                last_words: str = "") -> None:
    die_with_parent(parent_pid)
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        # The parent hosts the store (as torchrun's agent does): connect as clients.
        "TORCHELASTIC_USE_AGENT_STORE": "True", "CONVEYOR_LOCAL_CHILD": "1",
        "TORCHELASTIC_RESTART_COUNT": str(attempt),  # as torchrun: which attempt
        LAST_WORDS: last_words,  # where a rank that dies without a report was
    })
    # Every rank is on this machine: gloo (and NCCL's bootstrap) listen on
    # loopback only, never on the address the host name resolves to.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback_interface())
    code = 1
    try:
        import torch

        from conveyor.runtime.transport.group import init_rank

        if options.keep_heap:
            keep_freed_memory()
        if options.pin:  # before the group: its threads inherit the cores
            pin_rank(rank, nprocs)
        torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) // nprocs))
        ctx = init_rank(backend=options.backend, timeout_s=options.timeout_s, launcher="local")
        value = to_cpu(fn(ctx, *args, **kwargs))
        leave_together(ctx)
        try:
            # Pickled here, by value: the connection's own pickler would pass
            # tensors as shared-memory handles that die with this process.
            payload = pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # an unpicklable return value
            payload = pickle.dumps(("fail", FailureReport(
                rank=rank, kind="cause", error_type=type(e).__name__,
                summary=f"rank {rank} returned a value the launcher cannot receive "
                        f"({type(e).__name__}: {e}); return plain data (numbers, lists, "
                        f"dicts, tensors)").to_dict()))
        conn.send_bytes(payload)
        code = 0
    except BaseException as e:  # noqa: BLE001 - report every failure to the parent
        try:
            conn.send_bytes(pickle.dumps(("fail", report_of(e, rank=rank).to_dict())))
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: destroying a process group whose peer failed
    # can block, and the parent already has everything it needs.
    os._exit(code)


def _run_local(fn, nprocs: int, args, kwargs, options: LaunchOptions,
               attempt: int = 0) -> list[Any]:
    store = loopback_store(nprocs)
    last_words = make_last_words()  # also sweeps the folders of killed launchers
    spawn = mp.get_context("spawn")
    procs, conns = [], []
    saved = forward_signals()
    caught: Signalled | None = None
    try:
        for r in range(nprocs):
            recv_end, send_end = spawn.Pipe(duplex=False)
            p = spawn.Process(target=_child_main, name=f"conveyor-rank{r}",
                              args=(r, nprocs, store.port, fn, args, kwargs, send_end, options,
                                    os.getpid(), attempt, last_words))
            p.start()
            send_end.close()
            procs.append(p)
            conns.append(recv_end)
        return _collect(procs, conns, options, last_words)
    except Signalled as e:
        caught = e
        raise
    finally:
        _stop(procs)
        for c in conns:
            c.close()
        remove_dir(last_words)
        del store
        for sig, old in saved.items():
            signal.signal(sig, old)
        if caught is not None:
            # The ranks are gone; now end as the signal asked, through the
            # caller's own handler if it had one.
            os.kill(os.getpid(), caught.signum)


def _collect(procs, conns, options: LaunchOptions, last_words: str = "") -> list[Any]:
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
            status, payload = pickle.loads(conns[r].recv_bytes())
        except (EOFError, OSError):
            closed[r] = True
            return False  # closed without a message: the sentinel tells how it ended
        except Exception as e:  # a value that pickles but does not load here
            status, payload = "fail", FailureReport(
                rank=r, kind="cause", error_type=type(e).__name__,
                summary=f"rank {r} returned a value the launcher cannot load ({type(e).__name__}: "
                        f"{e}); return plain data (numbers, lists, dicts, tensors)").to_dict()
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
            if not messaged[r] and procs[r].exitcode == NO_MAIN_GUARD:
                reports.append(_no_guard(r))
                failed_at = failed_at or time.monotonic()
            elif not messaged[r]:
                from conveyor.runtime.procs.hang import EXIT_CODE as HANG  # the report is printed
                reports.append(FailureReport(rank=r, kind="cause",
                                             summary=death_summary(
                                                 r, procs[r].exitcode, HANG,
                                                 read_last_words(last_words, r))))
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
            try:  # a stopped rank (SIGSTOP) acts on SIGTERM only once it runs again
                os.kill(p.pid, signal.SIGCONT)
            except OSError:
                pass
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
