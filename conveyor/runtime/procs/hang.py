"""Hang forensics: when a rank waits on a peer longer than ``timeout_s``, every
rank says what it last completed and what it is doing or waiting on, in one
table printed once, and every process exits.

How: one daemon thread per rank process (the "watch") polls a private client
connection to the launcher's rendezvous store (the local launcher's, or
torchrun's agent store), which stays reachable while the main thread is stuck
in a forward or blocked in a receive. The main thread only sets a few
attributes as it goes (``Progress``); the watch reads them.

1. A rank whose ``Comm.wait`` has lasted longer than ``timeout_s`` claims the
   report (``store.add`` of a counter: the first claim wins, so it prints once).
2. The reporter raises a flag; every watch publishes its rank's progress.
3. The reporter collects them (ranks that do not answer within a few seconds
   show as "no answer"), prints the table to stderr, raises the exit flag and
   leaves; every watch sees the flag and leaves too (``os._exit(EXIT_CODE)``:
   the main thread may be stuck in user code or in C, where nothing else
   reaches it).

The first step a process runs (per interpreter: training, inference) waits
``FIRST_STEP`` times longer (its handshakes and lazy start-up are slow; also
the first step after loading a checkpoint). Outside steps (building the model,
loading a checkpoint) nothing is watched: the process group's timeout
(``LaunchOptions.timeout_s``, 300 s) bounds those collectives. The comm's own
timeout stays as a backstop, ``BACKSTOP_S`` after the first step's, for when
the store is unreachable.

Compiling (``PipelineConfig(compile=...)``): a rank compiling a stage is
busy for seconds to minutes, and its peers wait on it. While any rank
compiles (``compiling``, published through the store) no wait counts as a
hang: a wait's clock restarts when the last compile ends. The comm's own
timeout gets ``COMPILE_S`` more.

Instrumentation: ``watch(pipe)`` hooks into the pipeline's interpreters
(``on_step``, ``wrap_actions``) and comms (``on_wait``), so the interpreter
and comm stay unaware of it.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta

from conveyor.runtime.errors import describe
from conveyor.runtime.procs.lastwords import LastWords

__all__ = ["Progress", "watch", "format_table", "backstop_s", "compiling", "EXIT_CODE",
           "BACKSTOP_S", "FIRST_STEP", "COMPILE_S"]

EXIT_CODE = 75       # what every rank exits with after a hang report
BACKSTOP_S = 15.0    # the comm's own timeout, after the report's
FIRST_STEP = 2.0     # the first step (handshakes, lazy start-up) gets this times timeout_s
POLL_S = 0.25
ANSWER_S = 5.0       # how long the reporter waits for the other ranks' progress
COMPILE_S = 3600.0   # more backstop for a pipeline that compiles its stages


@dataclass
class Progress:
    """What this rank's main thread is doing; written by it, read by the watch.

    step:     the pipeline step running, None outside a step.
    last:     the last action completed in this step.
    doing:    the action in progress, and since when (monotonic seconds).
    peer:     while waiting inside ``doing``: the peer waited on, and since when.
    """

    step: int | None = None
    last: object = None
    doing: object = None
    doing_since: float = 0.0
    peer: int | None = None
    wait_since: float = 0.0
    timeout_s: float = 60.0  # for the step running
    compiling: bool = False  # compiling a stage (see ``compiling``)

    def row(self, rank: int, now: float) -> dict:
        if self.compiling and self.doing is not None:
            state, what, since = "compiling", describe(self.doing), self.doing_since
        elif self.step is None:
            state, what, since = "outside a step", "", None
        elif self.peer is not None:
            state, what, since = "waiting", describe(self.doing), self.wait_since
        elif self.doing is not None:
            state, what, since = "busy", describe(self.doing), self.doing_since
        else:
            state, what, since = "between actions", "", None
        return {"rank": rank, "state": state, "step": self.step, "action": what,
                "peer": self.peer, "mb": getattr(self.doing, "mb", None),
                "for_s": None if since is None else round(now - since, 1),
                "last": describe(self.last) if self.last is not None else "nothing yet"}


def format_table(rows: list[dict], *, reporter: int, timeout_s: float) -> str:
    """The one report: a line naming who waited too long, then a row per rank."""
    head = ("rank", "state", "peer", "mb", "for", "doing / waiting in", "last completed")
    cells = [head] + [(str(r["rank"]), r["state"], "" if r.get("peer") is None else str(r["peer"]),
                       "" if r.get("mb") is None else str(r["mb"]),
                       "" if r.get("for_s") is None else f"{r['for_s']:g} s",
                       r.get("action", ""), r.get("last", "")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    me = next(r for r in rows if r["rank"] == reporter)
    return (f"conveyor: hang: rank {reporter} waited on rank {me['peer']} longer than "
            f"{timeout_s:g} s (timeout_s, x{FIRST_STEP:g} on the first step); every "
            f"rank's position:\n" + "\n".join(lines) +
            "\n(busy: in this action; waiting: blocked on that peer; raise "
            "PipelineConfig(timeout_s=...) if a rank is only slow)")


class _Watch:
    """The one watch thread of this process (one process = one rank)."""

    def __init__(self, rank: int, world_size: int, store):
        self.rank, self.world_size, self.store = rank, world_size, store
        # torchrun's agent store outlives a restart of the workers: keys of an
        # earlier attempt (its "exit") must not reach this one.
        self.key = f"conveyor/hang/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.progress = Progress()
        self.last_words = LastWords.from_env(rank)  # for a death without a report
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="conveyor-hang-watch",
                                       daemon=True)
        self.thread.start()
        # Stop the thread before the interpreter finalises: a daemon thread
        # that returns from a store call (C++, GIL released) during
        # finalisation is ended by pthread_exit, whose unwinding through
        # pybind11's frames calls std::terminate ("terminate called without
        # an active exception"): a rank that finished would die of SIGABRT.
        atexit.register(self.stop)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5.0)

    def _loop(self) -> None:
        published, told = False, False
        while not self.stopping.wait(POLL_S):
            try:
                if self.store.check([self.key + "exit"]):
                    os._exit(EXIT_CODE)
                if self.store.check([self.key + "report"]) and not published:
                    self._publish()
                    published = True
                p = self.progress
                if p.compiling != told:  # ranks compiling, counted in the store
                    told = p.compiling
                    self.store.add(self.key + "compiling", 1 if told else -1)
                if p.peer is not None and time.monotonic() - p.wait_since > p.timeout_s:
                    if self.store.add(self.key + "compiling", 0) > 0:
                        p.wait_since = time.monotonic()  # a peer compiles: not a hang
                    elif self.store.add(self.key + "claims", 1) == 1:
                        self._report(p.timeout_s)
            except Exception:  # the store went away: the run is ending anyway
                return

    def _publish(self) -> None:
        row = self.progress.row(self.rank, time.monotonic())
        self.store.set(f"{self.key}state/{self.rank}", json.dumps(row))

    def _report(self, timeout_s: float) -> None:
        self.store.set(self.key + "report", str(self.rank))
        self._publish()
        keys = [f"{self.key}state/{r}" for r in range(self.world_size)]
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline and not self.store.check(keys):
            time.sleep(POLL_S)
        rows = []
        for r, k in enumerate(keys):
            rows.append(json.loads(self.store.get(k)) if self.store.check([k]) else
                        {"rank": r, "state": "no answer", "action": "", "last": ""})
        print(format_table(rows, reporter=self.rank, timeout_s=timeout_s), file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        self.store.set(self.key + "exit", "1")
        os._exit(EXIT_CODE)


_WATCH: _Watch | None = None  # one per process: a process is one rank


def _the_watch(rank: int, world_size: int) -> _Watch | None:
    global _WATCH
    if _WATCH is None:
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port:
            return None
        import torch.distributed as dist
        try:
            store = dist.TCPStore(host, int(port), is_master=False,
                                  timeout=timedelta(seconds=10), wait_for_workers=False)
        except Exception:  # no store to reach: the comm's own timeout remains
            return None
        _WATCH = _Watch(rank, world_size, store)
    return _WATCH


def compiling(on: bool) -> None:
    """This process starts (True) or ends (False) compiling a stage; called
    by ``conveyor.runtime.execute.compiled``. No-op without a watch."""
    if _WATCH is not None:
        _WATCH.progress.compiling = on


def watch(pipe) -> bool:
    """Put the pipeline's steps under this process's hang watch. Returns
    False (and changes nothing) for one process or without a reachable store."""
    ctx = pipe.ctx
    # Keyed by global rank: the replicas of a dp x pp mesh share the store.
    w = _the_watch(ctx.global_rank, ctx.global_size) if ctx.global_size > 1 else None
    if w is None:
        return False
    p, timeout_s, lw = w.progress, pipe.config.timeout_s, w.last_words
    for interp in (pipe.interp, pipe._eval_interp):
        _wrap_interpreter(interp, p, pipe, timeout_s, lw)
    extra = COMPILE_S if getattr(pipe, "compiled", None) else 0.0
    for comm in (pipe.comm, pipe._eval_comm):
        _wrap_comm(comm, p, timeout_s, lw, ctx.to_global, extra)
    return True


def _wrap_interpreter(interp, p: Progress, pipe, timeout_s: float,
                      lw: LastWords | None = None) -> None:
    # The first step this process runs with this interpreter gets FIRST_STEP
    # times longer, whatever pipe.steps says: after a resume from a
    # checkpoint the step count is high but the handshakes are still ahead.
    runs = [0]
    owner = weakref.ref(pipe)  # the pipeline owns the interpreter: no cycle back

    def start() -> None:
        live = owner()
        p.step, p.last, p.doing, p.peer = (live.steps if live is not None else None), None, \
            None, None
        p.timeout_s = timeout_s * (FIRST_STEP if runs[0] == 0 else 1.0)
        runs[0] += 1

    def end() -> None:
        p.step = p.doing = p.peer = None
        if lw is not None:
            lw.idle()

    def watched(handler):
        def run_action(a):
            p.doing, p.doing_since = a, time.monotonic()
            if lw is not None:
                lw.busy(a)
            handler(a)
            p.last, p.doing = a, None
        return run_action

    if lw is not None:
        lw.learn(interp.row)

    interp.on_step(start, end)
    interp.wrap_actions(watched)


def _wrap_comm(comm, p: Progress, timeout_s: float, lw: LastWords | None = None,
               to_global=lambda r: r, extra_s: float = 0.0) -> None:
    comm.timeout = timedelta(seconds=backstop_s(timeout_s) + extra_s)

    def begin(peer: int, action) -> None:
        # The comm names pipeline ranks; the table and the launcher's death
        # summary name global ranks (the same unless dp > 1).
        peer = to_global(peer)
        if p.doing is None:  # the sends' wait after the last action
            p.doing, p.doing_since = action, time.monotonic()
        p.peer, p.wait_since = peer, time.monotonic()
        if lw is not None:
            lw.waiting(peer, action)

    def end() -> None:
        p.peer = None
        if lw is not None:
            lw.busy(p.doing)

    comm.on_wait(begin, end)


def backstop_s(timeout_s: float) -> float:
    """The comm's own timeout under the watch: after the longest the watch
    allows (the first step's), so that the watch's table comes first."""
    return timeout_s * FIRST_STEP + BACKSTOP_S
