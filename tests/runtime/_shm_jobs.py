"""Rank functions for test_shm.py: the shared-memory transport on its own,
between real processes (the local launcher's ranks), with a small ring so
that messages wrap around it and stream through it in pieces."""

from __future__ import annotations

import glob
import os
import time

import torch

from conveyor.runtime.transport.shm import ShmTransport, SizeMismatch

RING = 4096  # bytes: smaller than most messages below


def _msgs(seed: int) -> list[tuple[int, torch.Tensor]]:
    """(tag, tensor) in send order: empty, tiny, odd sizes, several times the
    ring, four dtypes, and one tag used twice (paired in order)."""
    g = torch.Generator().manual_seed(seed)
    return [(7, torch.empty(0)),
            (3, torch.tensor([True, False, True])),
            (9, torch.randn(1001, generator=g, dtype=torch.float64)),   # 8008 B, about 2 rings
            (1, torch.randint(0, 1 << 40, (5, 7), generator=g)),
            (4, torch.randn(3, 3000, generator=g)),                     # 36000 B, 9 rings
            (4, torch.randn(17, generator=g).to(torch.bfloat16)),
            (2, torch.randn(65, generator=g))]


def exchange_job(ctx, recv_order: list[int]) -> dict:
    """Both ranks send every message of ``_msgs`` to each other at once (so
    both rings fill and both sides must keep draining while they wait), then
    post their receives in ``recv_order`` (indices into the messages; the
    receives of one tag in order). Returns what arrived, the segment's file
    state and the number of bytes kept aside."""
    t = ShmTransport(rank=ctx.rank, pairs={(0, 1), (1, 0)}, ring_bytes=RING)
    peer = 1 - ctx.rank
    mine, theirs = _msgs(ctx.rank), _msgs(peer)
    sends = [t.isend(x, peer, tag) for tag, x in mine]
    if ctx.rank == 0:
        time.sleep(0.3)  # rank 1's messages arrive before rank 0's receives
    bufs = {i: torch.empty_like(theirs[i][1]) for i in recv_order}
    recvs = [t.irecv(bufs[i], peer, theirs[i][0]) for i in recv_order]
    for w in recvs + sends:
        w.wait(None)
    # Rank 0 unlinks the file right after set-up, before it sends: once its
    # messages are here, the file must be gone.
    left = glob.glob("/dev/shm/conveyor-*")
    ok = [torch.equal(bufs[i], theirs[i][1]) for i in recv_order]
    return {"rank": ctx.rank, "equal": ok, "left": left, "done": all(w.is_completed() for w in
                                                                   recvs + sends)}


def mismatch_job(ctx) -> str:
    t = ShmTransport(rank=ctx.rank, pairs={(0, 1)}, ring_bytes=RING)
    if ctx.rank == 0:
        t.isend(torch.zeros(10), 1, 5).wait(None)
        time.sleep(0.5)  # until rank 1 has read it
        return ""
    try:
        t.irecv(torch.zeros(12), 0, 5).wait(None)
    except SizeMismatch as e:
        return str(e)
    return "no error"
