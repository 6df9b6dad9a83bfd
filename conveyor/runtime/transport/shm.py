"""A shared-memory transport for the ranks of a pipeline on one host
(``PipelineConfig(transport="shm")``).

Why: over gloo, every message between two CPU ranks passes through each
rank's transport thread, which shares the core with the rank's compute. On
the real-compute planner benchmark (2 ranks, a core each) the thread hops
made steps of schedules with two stages per rank vary by 10-40 ms within one
launch (benchmarks/planner.md). Here the rank's own thread copies a message
into shared memory when it sends, and the receiver's thread copies it out
when it waits: no thread in between, so a transfer costs two copies and, if
the receiver is already waiting, one wake-up.

Layout: one segment per transport, made by the group's rank 0 in /dev/shm,
opened by the others and unlinked as soon as every rank has mapped it (so a
crash leaves no file behind). It holds a doorbell word per rank and a ring
per directed pair of ranks that exchange messages (neighbouring stages). A
ring is a byte stream with one writer and one reader: 64-byte frames, each a
header (tag, payload bytes) followed by the payload, padded to 64 bytes.

Matching: as on gloo, a message pairs with the receive of the same peer and
tag, in order among equal tags. A receive posted before its message arrives
gets the payload copied straight into its buffer; a message that arrives
first is kept aside until its receive is posted (at most what one step
sends, since a peer cannot run ahead of the step). A message larger than
the ring streams through it in pieces; sends that do not fit yet are queued
and pushed whenever this rank next sends, posts a receive or waits, so a
rank that waits keeps every channel moving and no order of waits deadlocks.

Waiting sleeps on the rank's doorbell (a futex), which a peer rings after
writing a message or freeing ring space; every 0.2 s the waiter also checks
that the peer's process still runs, so a rank that dies is noticed at once
rather than at the timeout.

Limits: Linux on x86-64 (the ring relies on its store order), CPU tensors,
every rank of the pipeline's group on one host sharing /dev/shm.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import struct
import time
from collections import deque

import torch
import torch.distributed as dist

from conveyor.runtime.transport.shm_os import (
    alive, boot_id, check_platform, create, futex_wait, futex_wake,
)

__all__ = ["ShmTransport", "RING_BYTES", "SizeMismatch", "check_platform"]

RING_BYTES = 4 << 20        # per directed pair of ranks
FRAME = 64                  # header size and payload alignment
_RING_HEAD = 128            # a ring's write and read counters, a cache line each
_BELL = 64                  # a doorbell word per rank, a cache line each
_POLL_S = 0.2               # longest sleep before checking the peer is alive
_HDR = struct.Struct("<qq")  # tag, payload bytes


class SizeMismatch(RuntimeError):
    """A message's size differs from the receive it pairs with."""


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's storage (no copy)."""
    return t.reshape(-1).view(torch.uint8)


class _Ring:
    """One direction between two ranks: ``head`` (bytes written, by the
    sender) and ``tail`` (bytes read, by the receiver) are monotonic."""

    def __init__(self, mm, offset: int, size: int):
        self.size = size
        self._head = ctypes.c_uint64.from_buffer(mm, offset)
        self._tail = ctypes.c_uint64.from_buffer(mm, offset + 64)
        self.base = offset + _RING_HEAD
        self.mm = mm
        self.data = torch.frombuffer(mm, dtype=torch.uint8, count=size, offset=self.base)

    def copy_in(self, pos: int, src: torch.Tensor) -> None:
        """Copy ``src`` (uint8) into the ring at stream position ``pos``."""
        at, n = pos % self.size, src.numel()
        first = min(n, self.size - at)
        self.data[at:at + first].copy_(src[:first])
        if first < n:
            self.data[:n - first].copy_(src[first:])

    def copy_out(self, pos: int, dst: torch.Tensor) -> None:
        at, n = pos % self.size, dst.numel()
        first = min(n, self.size - at)
        dst[:first].copy_(self.data[at:at + first])
        if first < n:
            dst[first:].copy_(self.data[:n - first])


class _Work:
    """A posted send or receive; ``wait`` drives the transport until it is done."""

    __slots__ = ("transport", "peer", "tag", "data", "done", "moved", "hdr", "holder")

    def __init__(self, transport, peer: int, tag: int, data: torch.Tensor | None,
                 holder: bool = False):
        self.transport, self.peer, self.tag, self.data = transport, peer, tag, data
        self.done = False
        self.moved = 0          # frame bytes after the header done (payload and padding)
        self.hdr = False        # a send: its header is written
        self.holder = holder    # a message read before its receive was posted

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout=None) -> bool:
        secs = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
        self.transport.wait_for(self, secs)
        return True


class ShmTransport:
    """Shared-memory channels between this rank and its peers in ``group``.

    Collective: every rank of ``group`` builds one, with the same ``pairs``
    (the (sender, receiver) group ranks that exchange messages). ``isend``
    and ``irecv`` mirror torch.distributed's, with group ranks."""

    def __init__(self, *, rank: int, pairs, group=None, ring_bytes: int = RING_BYTES):
        why = check_platform()
        if why:
            raise RuntimeError(f"transport='shm' cannot run here: {why}; use transport='dist'")
        self.rank = rank
        self.pairs = sorted(set(pairs))
        world = dist.get_world_size(group)
        ring_bytes = -(-ring_bytes // FRAME) * FRAME
        self.ring_bytes = ring_bytes
        me = (socket.gethostname(), boot_id(), os.getpid())
        everyone: list = [None] * world
        dist.all_gather_object(everyone, me, group=group)
        hosts = {(h, b) for h, b, _ in everyone}
        if len(hosts) > 1:
            raise RuntimeError(
                f"transport='shm' needs every rank of the pipeline on one host, but they run "
                f"on {len(hosts)} ({', '.join(sorted(h for h, _ in hosts))}); use "
                f"transport='dist' across hosts")
        self.pids = [p for _, _, p in everyone]
        # Liveness checks need the peers' processes in our /proc (same pid namespace).
        self.check_alive = all(alive(p) for p in self.pids)
        size = _BELL * world + len(self.pairs) * (_RING_HEAD + ring_bytes)
        made = [None, None]  # rank 0's path and, if it failed, why
        if rank == 0:
            made[0] = f"/dev/shm/conveyor-{os.getpid()}-{secrets.token_hex(6)}"
            made[1] = create(made[0], size)
        dist.broadcast_object_list(made, group_src=0, group=group)
        name, why = made
        if why:
            raise RuntimeError(why)
        try:
            try:
                fd, err = os.open(name, os.O_RDWR), None
            except OSError as e:
                fd, err = None, f"rank {rank} cannot open {name} ({e.strerror})"
            errs: list = [None] * world
            dist.all_gather_object(errs, err, group=group)  # every rank has it open, or says why
        finally:
            if rank == 0:  # the segment lives on in the mappings; no file outlives the ranks
                os.unlink(name)
        bad = [e for e in errs if e]
        if bad:
            if fd is not None:
                os.close(fd)
            raise RuntimeError(
                f"transport='shm': {bad[0]}; the ranks do not share /dev/shm (separate "
                f"containers?): use transport='dist'")
        import mmap

        self.mm = mmap.mmap(fd, size)
        os.close(fd)
        self._bells = [ctypes.c_uint32.from_buffer(self.mm, r * _BELL) for r in range(world)]
        self._bell_addr = [ctypes.addressof(b) for b in self._bells]
        self.out: dict[int, _Ring] = {}
        self.inn: dict[int, _Ring] = {}
        for i, (a, b) in enumerate(self.pairs):
            ring = _Ring(self.mm, _BELL * world + i * (_RING_HEAD + ring_bytes), ring_bytes)
            if a == rank:
                self.out[b] = ring
            if b == rank:
                self.inn[a] = ring
        self.sendq: dict[int, deque[_Work]] = {p: deque() for p in self.out}
        self.posted: dict[int, dict[int, deque[_Work]]] = {p: {} for p in self.inn}
        self.stash: dict[int, dict[int, deque[torch.Tensor]]] = {p: {} for p in self.inn}
        self.reading: dict[int, _Work | None] = {p: None for p in self.inn}  # mid-message

    # -- the API the comm uses -------------------------------------------------------
    def isend(self, t: torch.Tensor, dst: int, tag: int) -> _Work:
        if dst not in self.out:
            raise RuntimeError(f"rank {self.rank} has no channel to rank {dst}")
        w = _Work(self, dst, tag, _as_bytes(t.contiguous()))
        self.sendq[dst].append(w)
        self._push(dst)
        return w

    def irecv(self, buf: torch.Tensor, src: int, tag: int) -> _Work:
        if src not in self.inn:
            raise RuntimeError(f"rank {self.rank} has no channel from rank {src}")
        w = _Work(self, src, tag, _as_bytes(buf))
        msg = _first(self.stash[src], tag)
        if msg is not None:
            self._fill(w, msg)
        else:
            self.posted[src].setdefault(tag, deque()).append(w)
            self._pull(src)
        return w

    def wait_for(self, w: _Work, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bell, addr = self._bells[self.rank], self._bell_addr[self.rank]
        while True:
            seen = bell.value
            self.progress()
            if w.done:
                return
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if left <= 0:
                raise RuntimeError(f"shared-memory transfer with rank {w.peer} timed out after "
                                   f"{timeout_s:g} s")
            futex_wait(addr, seen, left)
            if self.check_alive and not w.done and not alive(self.pids[w.peer]):
                self.progress()  # what it wrote before it died still counts
                if not w.done:
                    raise RuntimeError(f"Connection closed by peer: rank {w.peer}'s process "
                                       f"{self.pids[w.peer]} has exited")

    def progress(self) -> None:
        """Push queued sends and take in what has arrived, on every channel."""
        for p, q in self.sendq.items():
            if q:
                self._push(p)
        for p in self.inn:
            self._pull(p)

    # -- moving bytes ----------------------------------------------------------------
    def _ring(self, peer: int) -> None:
        b = self._bells[peer]
        b.value = (b.value + 1) & 0xFFFFFFFF
        futex_wake(self._bell_addr[peer])

    def _push(self, dst: int) -> None:
        ring, q = self.out[dst], self.sendq[dst]
        head = start = ring._head.value
        free = ring.size - (head - ring._tail.value)
        while q and free >= FRAME:
            w = q[0]
            if not w.hdr:
                _HDR.pack_into(ring.mm, ring.base + head % ring.size, w.tag, w.data.numel())
                head += FRAME
                free -= FRAME
                w.hdr = True
            k = _advance(ring.copy_in, head, w, free)
            head += k
            free -= k
            if not w.done:
                break
            q.popleft()
            w.data = None
        if head != start:
            ring._head.value = head
            self._ring(dst)

    def _pull(self, src: int) -> None:
        ring = self.inn[src]
        tail = start = ring._tail.value
        head = ring._head.value
        while head > tail:
            w = self.reading[src]
            if w is None:
                tag, n = _HDR.unpack_from(ring.mm, ring.base + tail % ring.size)
                tail += FRAME  # a header is written whole: FRAME bytes at an aligned place
                w = self.reading[src] = self._target(src, tag, n)
            tail += _advance(ring.copy_out, tail, w, head - tail)
            if not w.done:
                break
            self.reading[src] = None
            if w.holder:  # it came before its receive (which may have been posted since)
                self._keep(src, w.tag, w.data)
            w.data = None
        if tail != start:
            ring._tail.value = tail
            self._ring(src)

    def _target(self, src: int, tag: int, n: int) -> _Work:
        """The receive an incoming message fills: the first posted with its
        tag, else a holder that keeps it aside."""
        w = _first(self.posted[src], tag)
        if w is not None:
            if w.data.numel() != n:
                raise SizeMismatch(f"rank {src} sent {n} bytes with tag {tag} to a receive of "
                                   f"{w.data.numel()} bytes")
            return w
        return _Work(self, src, tag, torch.empty(n, dtype=torch.uint8), holder=True)

    def _keep(self, src: int, tag: int, msg: torch.Tensor) -> None:
        """A message read whole before its receive was posted: to the first
        receive of its tag posted meanwhile, else aside until one is."""
        w = _first(self.posted[src], tag)
        if w is not None:
            self._fill(w, msg)
        else:
            self.stash[src].setdefault(tag, deque()).append(msg)

    def _fill(self, w: _Work, msg: torch.Tensor) -> None:
        if w.data.numel() != msg.numel():
            raise SizeMismatch(f"rank {w.peer} sent {msg.numel()} bytes with tag {w.tag} to a "
                               f"receive of {w.data.numel()} bytes")
        w.data.copy_(msg)
        w.done, w.data = True, None


def _first(queues: dict, tag: int):
    """Take the oldest entry queued under ``tag`` (None if there is none)."""
    q = queues.get(tag)
    if not q:
        return None
    x = q.popleft()
    if not q:
        del queues[tag]
    return x


def _advance(copy, pos: int, w: _Work, room: int) -> int:
    """Move up to ``room`` bytes of ``w``'s frame (its payload, then the
    padding to a FRAME boundary, which is skipped, not copied) at stream
    position ``pos`` with ``copy(pos, bytes)``; the bytes moved. Marks ``w``
    done when its whole frame has moved."""
    n = w.data.numel()
    total = n + (-n % FRAME)
    k = min(total - w.moved, room)
    real = min(w.moved + k, n) - w.moved
    if real > 0:
        copy(pos, w.data[w.moved:w.moved + real])
    w.moved += k
    w.done = w.moved == total
    return k


def for_pipeline(ctx, placement) -> ShmTransport:
    """The channels a pipeline of this ``placement`` (stage -> rank) needs on
    this rank: one ring each way between ranks that hold neighbouring stages
    (one set serves the training and the inference comm: their steps never
    overlap, and messages pair by tag in order). PipelineError off the CPU or
    when the segment cannot be made."""
    from conveyor.errors import PipelineError

    if ctx.device.type != "cpu":
        raise PipelineError(f"transport='shm' moves CPU tensors, but this rank runs on "
                            f"{ctx.device}; use transport='dist' (NCCL) there")
    pl = list(placement)
    pairs = {(a, b) for s in range(len(pl) - 1) for a, b in
             ((pl[s], pl[s + 1]), (pl[s + 1], pl[s])) if a != b}
    try:
        return ShmTransport(rank=ctx.rank, pairs=pairs, group=ctx.pp_group)
    except RuntimeError as e:
        raise PipelineError(str(e)) from None
