"""Links between local ranks: a ping-pong for latency and bandwidth, the
runtime's own time per send and receive (``transfer_times``), and the fitted
per-action overhead, in one launch of 2 ranks (``measure_links``)."""

from __future__ import annotations

import statistics
import time

import torch

from conveyor.errors import PlanError
from conveyor.measure.fit import (
    TINY, TINY_M, TINY_STEPS, TINY_WARMUP, TINY_WIDTH, _tiny_loss, fit_tiny, tiny_steps,
)


class _Scale(torch.nn.Module):
    """x * w, feature by feature: a layer that costs next to nothing per byte."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


# ``transfer_times``: GPipe on 2 ranks, M micro-batches of one sample, at two
# widths (float32 numbers per sample: 16 B and 256 KiB per message).
HOST_WIDTHS = (4, 1 << 16)


def transfer_times(ctx, transport: str = "dist") -> dict | None:
    """The runtime's own time per send and per receive, as ``{"send":
    {"fixed": s, "per_byte": s}, "recv": {...}}``, from the recorded SEND and
    RECV events of GPipe pipelines of next-to-free layers on ``ctx``'s first
    two ranks at two message sizes (HOST_WIDTHS): a send is the median of
    its events; a receive, the lower quartile of its events (some of them
    wait for their message, which the fit must not count). Rank 0 returns
    it, the others None. On the 2-core test machine over shared memory a
    send of 700 KB took 0.06-0.17 ms in a real-compute run, where one
    action could move two messages and the fitted overhead covered one."""
    from torch import nn

    from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig
    from conveyor.schedule.ir import RECV_B, RECV_F, SEND_B, SEND_F

    got = {}
    for width in HOST_WIDTHS:
        model = nn.Sequential(*[_Scale(width) for _ in range(max(ctx.world_size, 2))])
        pipe = Pipeline(model, loss_fn=_tiny_loss, optimizer=None, schedule="gpipe",
                        microbatches=TINY_M, ctx=ctx, config=PipelineConfig(transport=transport))
        x, y = torch.randn(TINY_M, width), torch.randn(TINY_M, width)
        sends, recvs = [], []
        for k in range(TINY_WARMUP + TINY_STEPS):
            res = pipe.step(x, y, record=k >= TINY_WARMUP)
            if res.timeline is not None:
                for e in res.timeline.events:
                    kind = e.action.kind
                    if kind in (SEND_F, SEND_B):
                        sends.append(e.duration)
                    elif kind in (RECV_F, RECV_B):
                        recvs.append(e.duration)
        if ctx.rank == 0:
            got[4 * width] = (statistics.median(sends), statistics.quantiles(recvs, n=4)[0])
    if ctx.rank != 0:
        return None
    (n0, (s0, r0)), (n1, (s1, r1)) = sorted(got.items())

    def line(t0, t1):
        per = max((t1 - t0) / (n1 - n0), 0.0)
        return {"fixed": max(t0 - per * n0, 0.0), "per_byte": per}

    return {"send": line(s0, s1), "recv": line(r0, r1)}


def _ping_pong(ctx, sizes: list[int], rounds: int, overhead: bool,
               transport: str = "dist", channel=None) -> dict | None:
    import torch.distributed as dist

    def step(name: str) -> None:  # progress, from rank 0 to the launching process
        if channel is not None and ctx.rank == 0:
            channel.put(name)

    torch.set_num_threads(1)  # as a rank runs
    step("ping-pong")
    if transport == "shm":
        from conveyor.runtime.transport.shm import ShmTransport

        shm = ShmTransport(rank=ctx.rank, pairs={(0, 1), (1, 0)})
        peer = 1 - ctx.rank

        def send(buf):
            shm.isend(buf, peer, 0).wait(None)

        def recv(buf):
            shm.irecv(buf, peer, 0).wait(None)
    else:
        def send(buf):
            dist.send(buf, 1 - ctx.rank)

        def recv(buf):
            dist.recv(buf, 1 - ctx.rank)
    out = {}
    for nbytes in sizes:
        buf = torch.zeros(max(nbytes // 4, 1), dtype=torch.float32)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            if ctx.rank == 0:
                send(buf)
                recv(buf)
            else:
                recv(buf)
                send(buf)
            times.append((time.perf_counter() - t) / 2)  # one way
        out[nbytes] = statistics.median(times)
    if overhead:
        step("tiny pipelines (gpipe, 1f1b)")
    steps = tiny_steps(ctx, transport) if overhead else {}
    if overhead:
        step("send and receive times")
    host = transfer_times(ctx, transport) if overhead else None
    return {"one_way": out, "tiny_steps": steps, "host": host} if ctx.rank == 0 else None


_WIRE = {"dist": "gloo", "shm": "shared-memory"}


# Expected seconds of each step of measure_links on a quiet 2-core machine (the
# progress bar's weights; its ETA scales them by how fast the run goes).
LINK_STEPS = {"starting 2 ranks": 4.0, "ping-pong": 1.0, "tiny pipelines (gpipe, 1f1b)": 5.0,
              "send and receive times": 4.0}


def measure_links(*, sizes=(4, 4 << 20), rounds: int = 20, overhead: bool = True,
                  transport: str = "dist", progress=None) -> dict:
    """Latency (s) and bandwidth (bytes/s) between two local ranks over
    ``transport`` (PipelineConfig.transport: "dist", gloo here; "shm",
    shared memory), one launch of 2 ranks; the result names the transport,
    and a run should use the one its plan was measured on.

    Bandwidth: the slope of a blocking ping-pong's one-way time between a
    tiny and a large message (median of ``rounds`` each). With ``overhead``
    (default), "latency" and "overhead" (the runtime's seconds per action)
    are fitted to the median steps of two pipelines of tiny layers
    (``conveyor.plan.overhead.fit_runtime``): what a transfer and an action
    cost as the runtime runs them, beyond the runtime's own time per send
    and per receive ("send" and "recv", ``transfer_times``), which the
    planner charges to the actions beside each transfer across ranks;
    ``profile(links=...)`` copies "overhead" into ``Profile.overhead``.
    Without it, "latency" is the ping-pong's tiny one-way time (kept as "ping_pong_latency" either way). The ranks are
    not pinned: on the 2-core test machine pinned tiny 1F1B steps measured
    6-16 ms between launches (unpinned 6-10 ms), and predictions of pinned
    real-compute runs from the unpinned fit were the closer
    (benchmarks/planner.md). ``progress``: a WeightedProgress to show the
    steps on (phase "links")."""
    from conveyor.runtime.procs.launcher import launch

    if transport not in ("dist", "shm"):
        raise PlanError(f"transport={transport!r}; use 'dist' or 'shm'")
    from conveyor.progress import progress_channel

    steps = list(LINK_STEPS) if overhead else list(LINK_STEPS)[:2]
    at = [0]

    def on_step(name: str) -> None:  # the previous step is done
        progress.advance(name, LINK_STEPS[steps[at[0]]])
        at[0] += 1

    if progress is not None:
        progress.expect(sum(LINK_STEPS[k] for k in steps), key="links")
        progress.phase("links", steps[0])
    with progress_channel(on_step if progress is not None else None) as channel:
        got = launch(_ping_pong, nprocs=2,
                     args=(list(sizes), rounds, overhead, transport, channel))[0]
    if progress is not None:
        progress.advance("done", LINK_STEPS[steps[-1]])
    one_way = got["one_way"]
    small, large = min(sizes), max(sizes)
    slope = (one_way[large] - one_way[small]) / (large - small)
    res = {"latency": one_way[small], "bandwidth": 1 / slope if slope > 0 else None,
           "ping_pong_latency": one_way[small], "measured": {str(k): v for k, v in one_way.items()},
           "method": f"{_WIRE[transport]} ping-pong, 2 ranks", "transport": transport}
    if overhead:
        med, host = got["tiny_steps"], got["host"]
        res["send"], res["recv"] = host["send"], host["recv"]
        res["overhead"], res["latency"] = fit_tiny(med, 2, res["bandwidth"], host)
        res["tiny_steps"] = med
        res["method"] = (f"bandwidth: {_WIRE[transport]} ping-pong, 2 ranks; send and recv: "
                         f"the runtime's SEND and RECV events in GPipe on 2 ranks at "
                         f"{4 * HOST_WIDTHS[0]} B and {4 * HOST_WIDTHS[1] >> 10} KiB per "
                         f"message; latency and overhead fitted to "
                         f"the median of {TINY_STEPS} steps each of {' and '.join(TINY)} on 2 "
                         f"ranks, M={TINY_M} of 1 sample, {TINY_WIDTH}-wide Linear layers, "
                         f"with those sends and receives charged")
    return res
