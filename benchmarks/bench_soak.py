"""Soak: P = 4 training for minutes over shm and over gloo; does anything grow?

    .venv/bin/python benchmarks/bench_soak.py --minutes 30            # the target run
    .venv/bin/python benchmarks/bench_soak.py --minutes 2 --transports shm dist

For each transport, four processes (conveyor's launcher) train a float32 MLP
(16 x Linear(256, 256) + Tanh, Adam, 1f1b, M = 8, batch 64) for ``--minutes``
of wall time, with a checkpoint saved every ``--save-every`` steps (0: never)
into a temporary folder that the run removes. Every ``--sample-s`` seconds each
rank records:

* its resident memory (VmRSS of /proc/self/status, bytes held);
* its open file descriptors (entries of /proc/self/fd, counted);
* the steps done and the median step time of the steps since the last sample.

The summary, per transport and rank:

* RSS growth after the first minute: (RSS at the end - RSS at the first sample
  past 60 s) / that RSS. Target: below 1 %. (The first minute holds the
  allocator's warm-up, the first checkpoint's buffers, the shm segment's pages
  being touched.)
* fds: smallest and largest count over the whole run (target: equal after
  the first minute);
* step-time drift: median step time of the last window against the first
  window past the first minute, in %. This one reports the machine's load as
  much as conveyor: the run states the load average before and after.

Results go to ``--out`` (default ``benchmarks/soak.json``) and a markdown table
is printed for ``benchmarks/soak.md``. The ranks stop together: every
``CHECK`` steps rank 0 tells the others, by a broadcast, whether the time is up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from conveyor.runtime import LaunchOptions, Pipeline, PipelineConfig, launch

P, M, BATCH, WIDTH, LAYERS = 4, 8, 64, 256, 16
CHECK = 20  # steps between the stop checks


def model() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    return nn.Sequential(*layers)


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak_job(ctx, transport: str, seconds: float, sample_s: float, save_every: int,
             ckpt: str) -> list[dict]:
    """Train until ``seconds`` have passed (rank 0's clock), sampling this
    rank's RSS, fds and step times every ``sample_s`` seconds."""
    pipe = Pipeline(model(), loss_fn=lambda o, t: ((o - t) ** 2).mean(),
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-4), schedule="1f1b",
                    microbatches=M, ctx=ctx, config=PipelineConfig(transport=transport))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, WIDTH, generator=g))
            for _ in range(8)]
    samples, window = [], []
    t0 = last = time.monotonic()
    stop = torch.zeros(1)
    step = 0
    while True:
        x, y = data[step % len(data)]
        s = time.perf_counter()
        pipe.step(x, y)
        window.append(time.perf_counter() - s)
        step += 1
        if save_every and step % save_every == 0:
            pipe.save(ckpt)
        now = time.monotonic()
        if now - last >= sample_s:
            samples.append({"t": now - t0, "rss": _rss(), "fds": _fds(), "steps": step,
                            "step_s": statistics.median(window)})
            window, last = [], now
        if step % CHECK == 0:
            stop[0] = float(ctx.rank == 0 and now - t0 >= seconds)
            dist.broadcast(stop, src=0)
            if stop[0]:
                break
    return samples


def summarize(samples: list[dict]) -> dict:
    """RSS growth after the first minute, the fd range and the step-time drift."""
    after = [s for s in samples if s["t"] >= 60] or samples[-1:]
    base, end = after[0], samples[-1]
    return {"rss_start": samples[0]["rss"], "rss_60s": base["rss"], "rss_end": end["rss"],
            "rss_growth_pct": 100 * (end["rss"] - base["rss"]) / base["rss"],
            "fds_min": min(s["fds"] for s in samples), "fds_max": max(s["fds"] for s in samples),
            "fds_min_after_60s": min(s["fds"] for s in after),
            "fds_max_after_60s": max(s["fds"] for s in after),
            "step_s_first": base["step_s"], "step_s_last": end["step_s"],
            "drift_pct": 100 * (end["step_s"] - base["step_s"]) / base["step_s"],
            "steps": end["steps"], "seconds": end["t"]}


def table(results: dict) -> str:
    lines = ["| transport | rank | steps | RSS at 60 s | RSS at end | growth after 60 s | "
             "fds (whole run) | fds after 60 s | step at 60 s | step at end | drift |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for transport, ranks in results["runs"].items():
        for r, s in enumerate(ranks):
            sm = s["summary"]
            lines.append(
                f"| {transport} | {r} | {sm['steps']} | {sm['rss_60s'] / 2**20:.1f} MiB | "
                f"{sm['rss_end'] / 2**20:.1f} MiB | {sm['rss_growth_pct']:+.2f} % | "
                f"{sm['fds_min']}-{sm['fds_max']} | {sm['fds_min_after_60s']}-"
                f"{sm['fds_max_after_60s']} | {1e3 * sm['step_s_first']:.1f} ms | "
                f"{1e3 * sm['step_s_last']:.1f} ms | {sm['drift_pct']:+.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="per transport (30)")
    ap.add_argument("--transports", nargs="+", default=["shm", "dist"],
                    help="shm and/or dist (gloo)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (5)")
    ap.add_argument("--save-every", type=int, default=200,
                    help="save a checkpoint every this many steps (200; 0: never)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("soak.json")))
    args = ap.parse_args()
    results = {"P": P, "M": M, "batch": BATCH, "layers": LAYERS, "width": WIDTH,
               "minutes": args.minutes, "sample_s": args.sample_s,
               "save_every": args.save_every, "cpus": os.cpu_count(),
               "load_before": os.getloadavg(), "runs": {}, "load_after": {}}
    for transport in args.transports:
        ckpt = tempfile.mkdtemp(prefix="conveyor-soak-")
        try:
            ranks = launch(soak_job, nprocs=P,
                           args=(transport, 60 * args.minutes, args.sample_s, args.save_every,
                                 os.path.join(ckpt, "ckpt")),
                           options=LaunchOptions(threads=1))
        finally:
            shutil.rmtree(ckpt)  # the temporary folder this run made
        results["runs"][transport] = [{"samples": s, "summary": summarize(s)} for s in ranks]
        results["load_after"][transport] = os.getloadavg()
        print(f"{transport}: done, load average {os.getloadavg()}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"load average before: {results['load_before']}, after: {results['load_after']}")


if __name__ == "__main__":
    main()
