"""Step time and bytes per step under fp32 and bf16, at P = 2 on this machine.

    .venv/bin/python benchmarks/bench_precision.py [--steps 15] [--out benchmarks/precision.json]

Two workloads, each one launch of 2 processes (conveyor's launcher, gloo on
loopback, one thread per rank):

- real compute: a pre-norm residual network over token ids (embedding, 8
  blocks of LayerNorm + Linear(C, 4C) + GELU + Linear(4C, C), a head; C = 256,
  64 tokens per sample, vocabulary 2048), 16 samples per step in M = 4
  micro-batches, 1F1B, Adam, TokenCrossEntropy. Under bf16 the Linear layers
  run in bfloat16 (this CPU has AVX512-BF16), LayerNorm and the residual
  stream in float32.
- emulated device: 8 emulated layers (``conveyor.measure.emulated``: each
  forward sleeps 4 ms and each backward 8 ms per micro-batch, as a GPU kernel
  holds the device, not the CPU), 16384 features per sample, M = 8: the step
  is the schedule plus the transfers, so only the bytes at the cut change.

Per workload the precisions take turns step by step, so machine load drifts
over all alike: "fp32"; "bf16" (boundary bfloat16, the default); "bf16, fp32
cut" (boundary_dtype="fp32"). A step's time is the slower rank's wall time
for ``Pipeline.step``; the table gives the median over ``--steps`` steps
after 3 warm-up steps. Bytes are what the byte counter counted (activations
forward plus gradients back, both ranks, one step; the handshake is apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from conveyor.measure.emulated import EmulatedTimes, emulated_stages
from conveyor.runtime import LaunchOptions, Pipeline, PipelineConfig, launch
from conveyor.runtime.train.losses import TokenCrossEntropy

V, C, T, DEPTH, BATCH, M = 2048, 256, 64, 8, 16, 4
CONFIGS = {"fp32": dict(precision="fp32"), "bf16": dict(precision="bf16"),
           "bf16, fp32 cut": dict(precision="bf16", boundary_dtype="fp32")}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(C), nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):  # (n, T, C)
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


def real_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(V, C), *[Block() for _ in range(DEPTH)],
                         nn.LayerNorm(C), nn.Linear(C, V))


def real_batch(k):
    g = torch.Generator().manual_seed(k)
    return torch.randint(0, V, (BATCH, T), generator=g), torch.randint(0, V, (BATCH, T),
                                                                        generator=g)


def _adam(ps):
    return torch.optim.Adam(ps, lr=1e-4)


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _run(ctx, workload: str, steps: int, warmup: int) -> dict:
    pipes = {}
    for name, kw in CONFIGS.items():
        if workload == "real":
            pipes[name] = Pipeline(real_model(), loss_fn=TokenCrossEntropy(), optimizer=_adam,
                                   schedule="1f1b", microbatches=M, ctx=ctx,
                                   config=PipelineConfig(**kw))
        else:
            stages = emulated_stages(2, width=16384, times=EmulatedTimes(0.004, 0.008),
                                     layers_per_stage=4)
            pipes[name] = Pipeline.from_stages(stages, loss_fn=_mse, optimizer=None,
                                               schedule="1f1b", microbatches=8, ctx=ctx,
                                               config=PipelineConfig(**kw))
    times = {name: [] for name in pipes}
    sent = {}
    for k in range(warmup + steps):
        if workload == "real":
            x, y = real_batch(k)
        else:
            g = torch.Generator().manual_seed(k)
            x, y = torch.randn(16, 16384, generator=g), torch.randn(16, 16384, generator=g)
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            res = pipe.step(x, y)
            wall = torch.tensor([time.perf_counter() - t0])
            torch.distributed.all_reduce(wall, op=torch.distributed.ReduceOp.MAX)
            if k >= warmup:
                times[name].append(float(wall))
                sent[name] = res.stats["sent_bytes"]
    totals = {}
    for name in pipes:
        b = torch.tensor([float(sent[name])])
        torch.distributed.all_reduce(b)
        totals[name] = int(b.item())
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                   "steps": len(ts),
                   "sent_bytes_per_step": totals[name]} for name, ts in times.items()}


def bench_rank(ctx, steps: int, warmup: int) -> dict:
    return {w: _run(ctx, w, steps, warmup) for w in ("real", "emulated")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).with_name("precision.json")))
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.time()
    got = launch(bench_rank, nprocs=2, args=(args.steps, 3),
                 options=LaunchOptions(threads=1))[0]
    record = {"when": time.strftime("%Y-%m-%d %H:%M"), "load_before": load0,
              "load_after": os.getloadavg(), "seconds": round(time.time() - t0, 1),
              "torch": torch.__version__, "cpu": _cpu(), "results": got}
    runs = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
    runs.append(record)
    Path(args.out).write_text(json.dumps(runs, indent=1) + "\n")
    for w, rows in got.items():
        base = rows["fp32"]
        print(f"\n{w}: median of {base['steps']} steps")
        print("| precision | step (ms) | vs fp32 | sent per step | vs fp32 |")
        print("|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {1000 * r['median_s']:.1f} | {r['median_s'] / base['median_s']:.3f}"
                  f" | {r['sent_bytes_per_step']:,} B | "
                  f"{r['sent_bytes_per_step'] / base['sent_bytes_per_step']:.3f} |")
    print(f"\nload average before {load0[0]:.2f}, after {record['load_after'][0]:.2f}")


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    main()
