"""Hang forensics: when a rank waits on a peer longer than ``timeout_s``, every
rank says what it last completed and what it is doing or waiting on, in one
table printed once, and every process exits.

A wait is either a point-to-point wait of the comm (``Comm.wait``, on gloo,
NCCL or shared memory) or a collective: every blocking call conveyor makes
on a process group once a pipeline is built (the step agreement, the loss
broadcast, tie sums, clipping, data-parallel all-reduces, checkpoint
barriers, the timeline gather) runs inside ``deadline.bounded``, which marks
it here. The watch bounds both alike.

How: one daemon thread per rank process (the "watch") polls a private client
connection to the launcher's rendezvous store (the local launcher's, or
torchrun's agent store), which stays reachable while the main thread is stuck
in a forward or blocked in a receive or a collective. The main thread only
sets a few attributes as it goes (``Progress``); the watch reads them.

1. A rank whose wait has lasted longer than ``timeout_s`` claims the report
   (``store.add`` of a counter: the first claim wins, so it prints once).
2. The reporter raises a flag; every watch publishes its rank's progress.
3. The reporter collects them (a rank that is stopped, on this host, shows
   as such at once; others that do not answer within a few seconds show as
   "no answer"), prints the table to stderr, raises the exit flag, resumes
   the stopped ranks (``stopped``) and leaves; every watch sees the flag and
   leaves too (``os._exit(EXIT_CODE)``: the main thread may be stuck in user
   code, in C, or in a collective that its backend cannot interrupt, where
   nothing else reaches it).

The first step a process runs (per interpreter: training, inference) waits
``FIRST_STEP`` times longer (its handshakes and lazy start-up are slow; also
the first step after loading a checkpoint), and so do the waits after the
pipeline is built and before that step (the first step's agreement, a
``CheckpointPolicy.resume``). Building a pipeline is not watched: the
process group's timeout (``LaunchOptions.timeout_s``, 300 s) bounds its
collectives. The comm's own timeout stays as a backstop, ``BACKSTOP_S``
after the first step's, for when the store is unreachable.

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
from dataclasses import dataclass, field
from datetime import timedelta

from conveyor.runtime.errors import describe
from conveyor.runtime.procs import stopped
from conveyor.runtime.procs.lastwords import ENV as LAST_WORDS, LastWords
from conveyor.runtime.procs.lastwords import read as read_last_words

__all__ = ["Progress", "watch", "current", "format_table", "backstop_s", "compiling",
           "EXIT_CODE", "BACKSTOP_S", "FIRST_STEP", "COMPILE_S"]

EXIT_CODE = 75       # what every rank exits with after a hang report
BACKSTOP_S = 15.0    # the comm's own timeout, after the report's
FIRST_STEP = 2.0     # the first step (handshakes, lazy start-up) gets this times timeout_s
POLL_S = 0.25
ANSWER_S = 5.0       # how long the reporter waits for the other ranks' progress
STALL_S = 2.0        # a poll this much late: this process was stopped, not waiting
COMPILE_S = 3600.0   # more backstop for a pipeline that compiles its stages


@dataclass
class Progress:
    """What this rank's main thread is doing; written by it, read by the watch.

    step:       the pipeline step running, None outside a step.
    last:       the last action (or collective, as text) completed.
    doing:      the action in progress, and since when (monotonic seconds).
    peer:       while waiting inside ``doing``: the peer waited on, and since when.
    collective: while waiting in a collective: what, over which ranks (text),
                since ``wait_since``; ``members`` its group's global ranks.
    idle_since: when the last step or collective ended (for a rank outside a step).
    timeout_s:  the longest wait allowed now (the step's, x FIRST_STEP on a first one).
    """

    step: int | None = None
    last: object = None
    doing: object = None
    doing_since: float = 0.0
    peer: int | None = None
    wait_since: float = 0.0
    timeout_s: float = 60.0
    collective: str | None = None
    members: tuple = ()
    idle_since: float = field(default_factory=time.monotonic)
    compiling: bool = False  # compiling a stage (see ``compiling``)

    def waiting(self) -> bool:
        return self.peer is not None or self.collective is not None

    def row(self, rank: int, now: float) -> dict:
        if self.compiling and self.doing is not None:
            return {"rank": rank, "state": "compiling", "step": self.step,
                    "action": describe(self.doing), "group": None, "peer": None,
                    "mb": getattr(self.doing, "mb", None),
                    "for_s": round(now - self.doing_since, 1), "last": _text(self.last)}
        if self.collective is not None:
            return {"rank": rank, "state": "waiting", "step": self.step,
                    "action": self.collective, "group": list(self.members), "peer": None,
                    "mb": None, "for_s": round(now - self.wait_since, 1),
                    "last": _text(self.last)}
        if self.step is None:  # user code, the optimizer, or stuck in either
            state, what, since = "outside", "no action or collective of the pipeline", \
                self.idle_since
        elif self.peer is not None:
            state, what, since = "waiting", describe(self.doing), self.wait_since
        elif self.doing is not None:
            state, what, since = "busy", describe(self.doing), self.doing_since
        else:
            state, what, since = "between actions", "", None
        return {"rank": rank, "state": state, "step": self.step, "action": what,
                "peer": self.peer, "mb": getattr(self.doing, "mb", None),
                "for_s": None if since is None else round(now - since, 1),
                "last": _text(self.last)}


def _text(done) -> str:
    if done is None:
        return "nothing yet"
    return done if isinstance(done, str) else describe(done)


def format_table(rows: list[dict], *, reporter: int, timeout_s: float) -> str:
    """The one report: a line naming who waited too long and in what, then a
    row per rank, then (for a collective) which of its ranks are not in it."""
    head = ("rank", "state", "peer", "mb", "for", "doing / waiting in", "last completed")
    cells = [head] + [(str(r["rank"]), r["state"], "" if r.get("peer") is None else str(r["peer"]),
                       "" if r.get("mb") is None else str(r["mb"]),
                       "" if r.get("for_s") is None else f"{r['for_s']:g} s",
                       r.get("action", ""), r.get("last", "")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    me = next(r for r in rows if r["rank"] == reporter)
    waited = (f"waited on rank {me['peer']}" if me.get("peer") is not None
              else f"waited in {me.get('action')}")
    absent = ""
    if me.get("group"):
        away = [r for r in rows if r["rank"] in me["group"] and r.get("action") != me["action"]]
        if away:
            absent = ("\nnot in it: " + ", ".join(f"rank {r['rank']} ({r['state']})"
                                                  for r in away))
    return (f"conveyor: hang: rank {reporter} {waited} longer than "
            f"{timeout_s:g} s (timeout_s, x{FIRST_STEP:g} on the first step); every "
            f"rank's position:\n" + "\n".join(lines) + absent +
            "\n(busy: in this action; waiting: blocked on that peer or collective; outside: "
            "in its own code, not the pipeline's; raise PipelineConfig(timeout_s=...) if a "
            "rank is only slow)")


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
        # Who this process is, for a reporter on the same host to see it
        # stopped (conveyor.runtime.procs.stopped).
        store.set(f"{self.key}proc/{rank}", json.dumps(stopped.identity()))
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
        last = time.monotonic()
        while not self.stopping.wait(POLL_S):
            now = time.monotonic()
            late, last = now - last - POLL_S, now
            p = self.progress
            if late > STALL_S and p.waiting() and p.wait_since < now - late:
                # This process did not run (the whole job stopped with Ctrl-Z or
                # a scheduler's suspend, then resumed): that time is not spent
                # waiting on a peer, or every rank would report at once on resume.
                p.wait_since += late
            try:
                if self.store.check([self.key + "exit"]):
                    os._exit(EXIT_CODE)
                if self.store.check([self.key + "report"]) and not published:
                    self._publish()
                    published = True
                if p.compiling != told:  # ranks compiling, counted in the store
                    told = p.compiling
                    self.store.add(self.key + "compiling", 1 if told else -1)
                since = p.wait_since  # set before the wait is marked (see deadline)
                if p.waiting() and time.monotonic() - since > p.timeout_s:
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
        halted: dict[int, tuple] = {}  # rank -> (its identity, why it runs no thread)
        while time.monotonic() < deadline:
            missing = [r for r, k in enumerate(keys) if not self.store.check([k])]
            for r in missing:
                if r not in halted:
                    ident = self._identity(r)
                    why = stopped.stopped(ident) if ident is not None else None
                    if why is not None:
                        halted[r] = (ident, why)
            if all(r in halted for r in missing):
                break  # a stopped rank cannot answer: waiting for it is no use
            time.sleep(POLL_S)
        rows = []
        for r, k in enumerate(keys):
            if self.store.check([k]):
                rows.append(json.loads(self.store.get(k)))
            elif r in halted:
                where = read_last_words(os.environ.get(LAST_WORDS, ""), r)
                rows.append({"rank": r, "state": "stopped", "action": halted[r][1] + where,
                             "last": ""})
            else:
                rows.append({"rank": r, "state": "no answer", "action": "", "last": ""})
        print(format_table(rows, reporter=self.rank, timeout_s=timeout_s), file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        self.store.set(self.key + "exit", "1")
        for ident, _ in halted.values():
            stopped.resume(ident)  # it runs again, its watch sees the flag and exits
        os._exit(EXIT_CODE)

    def _identity(self, r: int):
        k = f"{self.key}proc/{r}"
        return json.loads(self.store.get(k)) if self.store.check([k]) else None


_WATCH: _Watch | None = None  # one per process: a process is one rank


def current() -> _Watch | None:
    """This process's watch, once a pipeline is watched; None before or without one."""
    return _WATCH


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
    # Until its first step starts, the pipeline's collectives (the first
    # step's agreement, a resume's broadcast) get the first step's allowance.
    p.timeout_s = timeout_s * FIRST_STEP
    for interp in (pipe.interp, pipe._eval_interp):
        _wrap_interpreter(interp, p, pipe, timeout_s, lw)
    extra = COMPILE_S if getattr(pipe, "compiled", None) else 0.0
    for comm in (pipe.comm, pipe._eval_comm):
        _wrap_comm(comm, p, timeout_s, lw, ctx.to_global, extra)
    return True


def watch_runner(pipe, runner, comm) -> bool:
    """Put one more runner of actions (with ``row``, ``on_step`` and
    ``wrap_actions``, as the interpreter has: the decode loop) and its comm
    under the watch that ``watch(pipe)`` started; False when none runs."""
    ctx = pipe.ctx
    w = _the_watch(ctx.global_rank, ctx.global_size) if ctx.global_size > 1 else None
    if w is None:
        return False
    _wrap_interpreter(runner, w.progress, pipe, pipe.config.timeout_s, w.last_words)
    _wrap_comm(comm, w.progress, pipe.config.timeout_s, w.last_words, ctx.to_global)
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
        # p.timeout_s stays: it bounds the collectives that follow the step
        # (loss, tie sums, clipping, dp) and the next step's agreement.
        p.step = p.doing = p.peer = None
        p.idle_since = time.monotonic()
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
        # wait_since first: the watch must never see the new wait with an old start
        p.wait_since = time.monotonic()
        p.peer = peer
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
