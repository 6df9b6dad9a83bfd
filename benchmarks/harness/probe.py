"""The same instruments on every framework: a stage probe, RSS and a byte counter.

Both conveyor and torch.distributed.pipelining run stage modules wrapped in a
``Probe``, so their timelines, bubbles and activations held are measured by
one instrument and compare fairly. The probe stamps

    F start   entering the stage's forward      F end   leaving it
    B start   the output's gradient arrives     B end   the input's gradient is made

on ``time.perf_counter`` (CLOCK_MONOTONIC on Linux: one clock for every process
on the host, so ranks line up without a handshake). Micro-batches are numbered
by call order, which is right for schedules that run F and B each in
micro-batch order (naive, gpipe, 1f1b).

Bytes sent are counted by wrapping ``torch.distributed``'s point-to-point sends
(``isend`` and ``send``), which every tensor crossing a cut goes through in both
frameworks. Object sends (shape handshakes) are pickled tensors sent with
``send``, so they are counted too: the timed steps come after warm-up, when no
handshake runs.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch
from torch import nn

from conveyor.schedule.ir import B, F

__all__ = ["StageStamps", "Probe", "SendCounter", "rss_bytes", "link_latency"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(_fd=[None]) -> int:  # noqa: B006 - the list caches the open file
    """Resident set size of this process now (from /proc/self/statm), or 0."""
    if _fd[0] is None:
        try:
            _fd[0] = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            _fd[0] = -1
    if _fd[0] < 0:
        return 0
    return int(os.pread(_fd[0], 128, 0).split()[1]) * _PAGE


class StageStamps:
    """Stamps of this rank's stages for the current step, plus peak RSS.

    ``events`` holds ``(stage, kind, mb, start, end)``; micro-batches are
    numbered per stage and kind in call order.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.events: list[tuple[int, str, int, float, float]] = []
        self._count: dict[tuple[int, str], int] = {}
        self._open: dict[tuple[int, str], float] = {}
        self.rss_start = rss_bytes()
        self.rss_peak = self.rss_start

    def _rss(self) -> None:
        r = rss_bytes()
        if r > self.rss_peak:
            self.rss_peak = r

    def start(self, stage: int, kind: str) -> None:
        self._open[(stage, kind)] = time.perf_counter()
        if kind == B:
            self._rss()  # before the backward frees anything

    def end(self, stage: int, kind: str) -> None:
        t = time.perf_counter()
        mb = self._count.get((stage, kind), 0)
        self.events.append((stage, kind, mb, self._open.pop((stage, kind)), t))
        self._count[(stage, kind)] = mb + 1
        if kind == F:
            self._rss()  # activations of this micro-batch are now held


class _Stamp(torch.autograd.Function):
    """Identity whose backward calls ``hook`` (B start at a stage's output, B end
    at its input). ``anchor`` requires grad so the node runs even on stage 0,
    whose input does not. ``copy``: return a copy, not a view; at a stage's
    output, because torch's split backward detaches the output in place,
    which a view refuses."""

    @staticmethod
    def forward(ctx, x, anchor, hook, copy):
        ctx.hook = hook
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.hook()
        return g, None, None, None


class Probe(nn.Module):
    """Wrap stage ``stage``'s module so that every forward and backward is stamped.

    Backward stamps run from the output's gradient arriving to the input's
    gradient being made: a full B, or the I part of a split backward (a W
    that runs later is not stamped).
    """

    def __init__(self, inner: nn.Module, stamps: StageStamps, stage: int):
        super().__init__()
        self.inner = inner
        self.stamps = stamps
        self.stage = stage
        # A plain tensor, not a Parameter: optimizers and frameworks never see it.
        self._anchor = torch.zeros((), requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st, s = self.stamps, self.stage
        st.start(s, F)
        if torch.is_grad_enabled():
            x = _Stamp.apply(x, self._anchor, lambda: st.end(s, B), False)
        y = self.inner(x)
        if torch.is_grad_enabled():
            y = _Stamp.apply(y, None, lambda: st.start(s, B), True)
        st.end(s, F)
        return y


class SendCounter:
    """Counts bytes of tensors sent point-to-point while ``counting()`` is active.

    Installed once per process before any pipeline is built, because the
    frameworks capture ``dist.isend`` when they build their operations.
    """

    def __init__(self):
        self.bytes = 0
        self.sends = 0
        self.active = False
        self._installed = False

    def install(self) -> "SendCounter":
        if self._installed:
            return self
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        def wrap(fn):
            def counted(tensor, *args, **kwargs):
                if self.active:
                    self.bytes += tensor.numel() * tensor.element_size()
                    self.sends += 1
                return fn(tensor, *args, **kwargs)
            counted.__name__ = fn.__name__
            counted.__wrapped__ = fn
            return counted

        for name in ("isend", "send"):
            w = wrap(getattr(c10d, name))
            # Both names: P2POp validates against c10d's, users call dist's.
            setattr(c10d, name, w)
            setattr(dist, name, w)
        self._installed = True
        return self

    @contextlib.contextmanager
    def counting(self):
        self.bytes = self.sends = 0
        self.active = True
        try:
            yield self
        finally:
            self.active = False


def link_latency(rank: int, P: int, *, nbytes: int, device: torch.device,
                 trials: int = 12) -> list[float] | None:
    """Median one-way latency of each cut in seconds (on rank 0; None elsewhere).

    Collective. The receiver has its irecv posted and waits, as a stage waits
    for its input; the sender stamps ``perf_counter`` into an activation-sized
    message (one clock on one host). The first two trials warm the link up.
    """
    import statistics

    import torch.distributed as dist

    buf = torch.zeros(max(nbytes // 8, 1), dtype=torch.float64, device=device)
    mine: list[float | None] = []
    for c in range(P - 1):
        got = []
        for _ in range(trials):
            work = dist.irecv(buf, c) if rank == c + 1 else None
            dist.barrier()
            if rank == c:
                time.sleep(0.002)  # the receiver is now blocked in wait()
                buf[0] = time.perf_counter()
                dist.send(buf, c + 1)
            elif rank == c + 1:
                work.wait()
                got.append(time.perf_counter() - float(buf[0]))
        mine.append(statistics.median(got[2:]) if got else None)
    everyone = [None] * P if rank == 0 else None
    dist.gather_object(mine, everyone, dst=0)
    if rank != 0:
        return None
    return [everyone[c + 1][c] for c in range(P - 1)]
