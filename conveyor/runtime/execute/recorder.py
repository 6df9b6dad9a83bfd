"""The measured timeline: per-rank event records on a clock shared by all ranks.

Each rank stamps every action with ``time.perf_counter()``. Clocks of different
processes (and machines) disagree, so at start-up each rank estimates the
offset of its clock to rank 0's with a few ping-pongs (NTP's rule: the round
trip with the smallest delay gives the tightest estimate) and adds it to its
stamps. After a recorded step rank 0 gathers all events, as one float tensor
per rank (no pickling), into the simulator's own ``Timeline`` type.

When recording is off the interpreter never calls into this module, so the
cost is one ``if`` per action.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

from conveyor.runtime.procs.deadline import bounded
from conveyor.schedule.ir import KINDS, Action
from conveyor.sim.timeline import Event, Timeline

__all__ = ["estimate_clock_offset", "Recorder", "ActivationMemory", "gather_timeline"]

_CODE = {k: i for i, k in enumerate(KINDS)}
_STATS = ("sent_bytes", "recv_bytes", "meta_bytes", "messages", "peak_activation_bytes",
          "peak_device_bytes")


def estimate_clock_offset(rank: int, world_size: int, *, device: torch.device,
                          rounds: int = 8, group=None) -> float:
    """Seconds to add to this rank's ``perf_counter`` to read rank 0's.

    Collective over the ranks of ``group`` (None: all; ranks are ranks in the
    group): rank 0 answers each other rank in turn and returns 0.0.
    """
    if world_size == 1:
        return 0.0
    buf = torch.zeros(1, dtype=torch.float64, device=device)
    if rank == 0:
        for r in range(1, world_size):
            for _ in range(rounds):
                dist.recv(buf, group=group, group_src=r)
                buf.fill_(time.perf_counter())
                dist.send(buf, group=group, group_dst=r)
        return 0.0
    best_rtt, best = math.inf, 0.0
    for _ in range(rounds):
        t1 = time.perf_counter()
        dist.send(buf, group=group, group_dst=0)
        dist.recv(buf, group=group, group_src=0)
        t3 = time.perf_counter()
        if t3 - t1 < best_rtt:
            # Rank 0 stamped its reply half-way through the round trip.
            best_rtt, best = t3 - t1, float(buf.item()) - (t1 + t3) / 2
    return best


class Recorder:
    """Events of one step on one rank, in this rank's clock."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[Action, float, float]] = []

    def add(self, action: Action, start: float, end: float) -> None:
        self.events.append((action, start, end))


class ActivationMemory:
    """Bytes one rank holds for the step's backward passes and transfers.

    Counted: the tensors autograd saved in each forward, the stage's kept
    inputs and outputs, the gradients kept from I for W, and the buffers of
    sends not yet let go and of receives posted but not yet consumed (not a
    size's handshake header: that is ``meta_bytes``). Each
    storage is counted once however many holders share it (an output that is
    also a send buffer counts once), parameters never. ``peak`` is the most
    held at once.

    Holders are keys: (stage, micro-batch) for what a forward keeps, or any
    other hashable (the interpreter uses the comm action) for buffers.
    """

    def __init__(self, params) -> None:
        self._param_storages = {p.untyped_storage().data_ptr() for p in params}
        self.held: dict = {}                  # key -> {data pointer: bytes}
        self._refs: dict[int, list[int]] = {}  # data pointer -> [holders, bytes]
        self.current = 0
        self.peak = 0

    @contextmanager
    def forward(self, key: tuple[int, int], seen: dict[int, int]):
        """Count what autograd saves while the body runs; ``seen`` collects
        data pointer -> bytes and may be extended by the body (``note``)."""

        def pack(t):
            self._note(t, seen)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield seen
        self._add(key, seen)

    def _note(self, t, seen: dict[int, int]) -> None:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if st.data_ptr() in self._param_storages:
                return
            # Count the view, not its storage: a micro-batch of the input is a
            # slice of the whole batch's storage, which the step holds anyway.
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0),
                                     min(st.nbytes(), t.numel() * t.element_size()))

    def note(self, tensors, seen: dict[int, int]) -> None:
        for t in tensors:
            self._note(t, seen)

    def hold(self, key, tensors) -> None:
        """Count ``tensors`` (None entries skipped) as held by ``key``."""
        seen: dict[int, int] = {}
        self.note([t for t in tensors if t is not None], seen)
        self._add(key, seen)

    def _add(self, key, seen: dict[int, int]) -> None:
        mine = self.held.setdefault(key, {})
        for ptr, n in seen.items():
            if ptr in mine:
                continue
            mine[ptr] = n
            ref = self._refs.get(ptr)
            if ref is None:
                self._refs[ptr] = [1, n]
                self.current += n
            else:
                ref[0] += 1
        self.peak = max(self.peak, self.current)

    def release(self, key) -> None:
        """``key`` lets go of what it held."""
        for ptr in self.held.pop(key, {}):
            ref = self._refs[ptr]
            ref[0] -= 1
            if ref[0] == 0:
                del self._refs[ptr]
                self.current -= ref[1]

    def reset(self) -> None:
        self.held.clear()
        self._refs.clear()
        self.current = self.peak = 0


def _exchange(mine, mine_stats, *, rank: int, world_size: int, device, group):
    """Every rank's (events, stats) on rank 0; None on the others."""
    with bounded("the timeline gather", group):
        if rank != 0:
            dist.send(torch.tensor([mine.shape[0]], dtype=torch.int64, device=device),
                      group=group, group_dst=0)
            dist.send(mine.to(device), group=group, group_dst=0)
            dist.send(mine_stats.to(device), group=group, group_dst=0)
            return None
        per_rank = [(mine, mine_stats)]
        for r in range(1, world_size):
            n = torch.zeros(1, dtype=torch.int64, device=device)
            dist.recv(n, group=group, group_src=r)
            buf = torch.zeros(int(n.item()), 5, dtype=torch.float64, device=device)
            dist.recv(buf, group=group, group_src=r)
            st = torch.zeros(len(_STATS), dtype=torch.float64, device=device)
            dist.recv(st, group=group, group_src=r)
            per_rank.append((buf.cpu(), st.cpu()))
        return per_rank


def gather_timeline(recorder: Recorder, *, rank: int, world_size: int, offset: float,
                    stats: dict[str, float], device: torch.device, schedule, meta: dict,
                    group=None) -> Timeline | None:
    """Collective over ``group`` (the pipeline's; None: all ranks): send every
    rank's events and stats to rank 0 (ranks in the group).

    Returns, on rank 0, a Timeline with ``source="measured"``, ``unit="s"``,
    times relative to the step's first event, and ``meta["ranks"]`` holding
    each rank's stats; None on the other ranks.
    """
    rows = [[a.stage, _CODE[a.kind], a.mb, s + offset, e + offset]
            for a, s, e in recorder.events]
    mine = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)  # (events, 5)
    mine_stats = torch.tensor([float(stats.get(k, 0)) for k in _STATS], dtype=torch.float64)
    per_rank = _exchange(mine, mine_stats, rank=rank, world_size=world_size, device=device,
                         group=group)
    if per_rank is None:
        return None
    events = []
    for r, (rows_t, _) in enumerate(per_rank):
        for stage, code, mb, s, e in rows_t.tolist():
            events.append(Event(r, Action(int(stage), KINDS[int(code)], int(mb)), s, e))
    t0 = min((e.start for e in events), default=0.0)
    events = [Event(e.rank, e.action, e.start - t0, e.end - t0) for e in events]
    meta = dict(meta)
    meta["ranks"] = [{k: int(v) for k, v in zip(_STATS, st.tolist())} for _, st in per_rank]
    return Timeline(P=schedule.P, M=schedule.M, S=schedule.S, schedule=schedule.name,
                    events=events, source="measured", unit="s",
                    forward_only=schedule.forward_only, meta=meta)
