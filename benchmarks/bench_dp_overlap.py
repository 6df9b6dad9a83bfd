"""Step time of dp 2 x pp 2 with the gradient all-reduce overlapped vs after the backward.

    .venv/bin/python benchmarks/bench_dp_overlap.py [--steps 8] [--mb 32] [--out FILE]

(default FILE: benchmarks/dp_overlap.md)

Four processes on this machine (conveyor's launcher, gloo on loopback):
two replicas of a two-rank pipeline. The stages are emulated layers
(``conveyor.measure.emulated``: each forward and backward sleeps for a set
time, as a GPU kernel would hold the device, not the host CPU), plus one
"ballast" parameter per stage that makes the stage's gradient ``--mb`` MiB
in float32 (split evenly over the stages of a rank). The all-reduce is real:
gloo moves and adds those bytes over loopback, using the CPU; nothing about
it is emulated.

For each schedule, two pipelines of the same stages run alternately step by
step (so machine load drifts over both alike): ``dp_overlap=True`` (each
stage's bucket starts when its last backward on the rank is done) and
``dp_overlap=False`` (every bucket after the whole backward). No optimizer
(``optimizer=None``): the step is forward, backward and the dp all-reduce.
A step's time is the slowest rank's wall time for ``Pipeline.step``; the
table gives the median over ``--steps`` steps after one warm-up step, and
the median time of one bucket's all-reduce alone on the same groups.

Timing depends on the machine's load: the table states the load average
before and after the run. Rerun on a quiet machine for clean figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.measure.emulated import EmulatedTimes, emulated_stages

WIDTH, M, DP, P = 64, 8, 2, 2
F_MS, B_MS = 20.0, 40.0  # per micro-batch, per rank (split over the rank's chunks)
SCHEDULES = {"1f1b": 1, "interleaved-1f1b": 2, "zbv": 2}  # name -> chunks per rank


class _BallastGrad(torch.autograd.Function):
    """Zeros shaped like x (so the activations are unchanged) whose backward
    gives the ballast its full-size gradient once per step (zeros, written
    like a real weight gradient), and nothing on later micro-batches, so the
    ballast costs one write per step, not one per micro-batch. It hangs off
    x.detach(): an input-gradient pass (I) never reaches it."""

    @staticmethod
    def forward(ctx, x_const, w):
        ctx.w = w
        return torch.zeros_like(x_const)

    @staticmethod
    def backward(ctx, g):
        w = ctx.w
        return None, (torch.zeros_like(w) if w.grad is None else None)


class Ballast(nn.Module):
    """A large parameter that leaves the activations unchanged: its gradient is
    full-size, so the all-reduce moves all of it."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x + _BallastGrad.apply(x.detach(), self.w)


def _stages(schedule: str, mb: float) -> list[nn.Module]:
    v = SCHEDULES[schedule]
    S = P * v
    times = EmulatedTimes(F_MS / 1e3 / v, B_MS / 1e3 / v)
    n = int(mb * 2**20 / 4 / v)  # float32 elements per stage
    split = schedule.startswith("zb")
    return [nn.Sequential(*st, Ballast(n))
            for st in emulated_stages(S, width=WIDTH, times=times, split_backward=split)]


def _loss(out, y):
    return ((out - y) ** 2).mean()


def job(ctx, schedules: list[str], steps: int, mb: float) -> dict:
    torch.set_num_threads(1)
    out = {}
    x, y = torch.randn(DP * M, WIDTH), torch.randn(DP * M, WIDTH)
    for name in schedules:
        pipes = {on: Pipeline.from_stages(_stages(name, mb), loss_fn=_loss, optimizer=None,
                                          schedule=name, microbatches=M, ctx=ctx, dp=DP,
                                          config=PipelineConfig(dp_overlap=on))
                 for on in (True, False)}
        times = {True: [], False: []}
        for k in range(steps + 1):
            for on, pipe in pipes.items():
                dist.barrier()
                t0 = time.perf_counter()
                pipe.step(x, y)
                wall = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.all_reduce(wall, op=dist.ReduceOp.MAX)  # the slowest rank's
                if k:  # the first step warms up (handshakes, buffers)
                    times[on].append(float(wall))
        pipe = pipes[True]
        flat = torch.zeros(sum(p.numel() for p in pipe.dp_sync.buckets[min(pipe.stages)]))
        ar = []
        for _ in range(5):
            dist.barrier(group=pipe.ctx.dp_group)
            t0 = time.perf_counter()
            dist.all_reduce(flat, group=pipe.ctx.dp_group)
            ar.append(time.perf_counter() - t0)
        out[name] = {"on": times[True], "off": times[False], "allreduce": ar,
                     "bucket_mib": flat.numel() * 4 / 2**20,
                     "early": pipe.dp_sync.early}
    return out


def _ms(xs) -> str:
    return f"{1e3 * statistics.median(xs):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--mb", type=float, default=128.0,
                    help="MiB of float32 gradient per rank (split over its stages)")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "dp_overlap.md"))
    args = ap.parse_args()
    names = args.schedules.split(",")
    load0 = os.getloadavg()
    t0 = time.time()
    res = launch(job, nprocs=DP * P, args=(names, args.steps, args.mb))[0]
    load1 = os.getloadavg()
    rows = ["| schedule | chunks/rank | bucket (MiB) | one all-reduce (ms) | overlap on: step (ms) "
            "| overlap off: step (ms) | saving (ms) | saving |",
            "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = res[name]
        on, off = statistics.median(r["on"]), statistics.median(r["off"])
        rows.append(f"| {name} | {SCHEDULES[name]} | {r['bucket_mib']:.0f} | {_ms(r['allreduce'])} "
                    f"| {_ms(r['on'])} | {_ms(r['off'])} | {1e3 * (off - on):.1f} "
                    f"| {100 * (off - on) / off:.1f}% |")
    text = "\n".join([
        "# dp 2 x pp 2: gradient all-reduce overlapped with the backward, or after it",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_dp_overlap.py --steps {args.steps} "
        f"--mb {args.mb:g}` ({time.time() - t0:.0f} s).",
        "",
        f"4 processes (dp {DP} x pp {P}) on a {os.cpu_count()}-core machine, gloo over "
        f"loopback, one torch thread per rank. Emulated stages: {F_MS:g} ms forward and "
        f"{B_MS:g} ms backward per micro-batch per rank (sleeps, no CPU), M={M}, batch "
        f"{DP * M} (each replica {M} rows, one per micro-batch); a float32 gradient of "
        f"{args.mb:g} MiB per rank, all-reduced for real by gloo. No optimizer. Step time: "
        f"the slowest rank's wall time of `Pipeline.step`, median of {args.steps} steps "
        f"after one warm-up, the two modes alternating step by step. \"one all-reduce\": "
        f"median of 5 all-reduces of one bucket alone on the dp group.",
        "",
        f"Load average (1 min) before: {load0[0]:.2f}, after: {load1[0]:.2f} (the machine is "
        f"shared; rerun on a quiet one for clean figures).",
        "",
        *rows, "",
        "How to read it. A rank's step ends with the all-reduce of the bucket whose last "
        "backward it runs last, so overlap can hide only the buckets that finish earlier: "
        "with one stage per rank (1f1b) nothing on the rank that finishes last (pipeline "
        "rank 0), and with two chunks per rank at most the earlier chunk's bucket (about "
        "one \"one all-reduce\" of this table). With one stage per rank, what overlap can "
        "still win on this machine is that the later pipeline ranks' all-reduces run "
        "while rank 0 finishes its backward instead of at the same time as rank 0's, "
        "competing for the two cores (gloo reduces on the CPU; loopback TCP copies in "
        "the kernel); with a network or NCCL that contention, and that gain, would "
        "largely go. The step times include the load of the other processes on the "
        "machine (emulated compute alone would be about (M + P - 1) x 60 ms = 540 ms "
        "for 1f1b before the all-reduce).", ""])
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
