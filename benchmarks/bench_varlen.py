"""Shape-handshake cost: fixed vs varying sequence length (conveyor, P=2, gloo).

Three runs of the project's GPT (4 blocks, width 64, batch 16, M=4, 1f1b):

  fixed          T = 64 every step
  per-step       T cycles through 64, 48, 32, 56 (new lengths only at first)
  per-microbatch varying_shapes=True: a handshake before every micro-batch

For each: handshake bytes sent per step (rank 0, the sender of activations;
median over the timed steps, the first step, and all steps), handshake
messages, and the
median wall time per step over --steps steps after --warmup steps.

    .venv/bin/python benchmarks/bench_varlen.py [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from conveyor.models import GPT, GPTConfig
from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.runtime.transport.comm import META_LEN
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.runtime.execute.split import split_by_names

LENGTHS = {"fixed": [64], "per-step": [64, 48, 32, 56], "per-microbatch": [64]}


def job(ctx, steps: int, warmup: int) -> dict:
    torch.set_num_threads(1)
    out = {}
    for name, lengths in LENGTHS.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab=256, context=64, layers=4, heads=4, width=64))
        pipe = Pipeline.from_stages(
            split_by_names(model, split_points=["blocks.2"]), loss_fn=TokenCrossEntropy(),
            optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), schedule="1f1b", microbatches=4,
            ctx=ctx, config=PipelineConfig(loss_reduction="sum",
                                           varying_shapes=name == "per-microbatch"))
        g = torch.Generator().manual_seed(1)
        meta, wall = [], []
        for k in range(warmup + steps):
            T = lengths[k % len(lengths)]
            x = torch.randint(0, 256, (16, T), generator=g)
            y = torch.randint(0, 256, (16, T), generator=g)
            torch.distributed.barrier()
            t0 = time.perf_counter()
            res = pipe.step(x, y, side={"attention_mask": torch.ones(16, T, dtype=torch.long)})
            wall.append(time.perf_counter() - t0)
            meta.append(res.stats["meta_bytes"])
        out[name] = {"first_meta": meta[0], "total_meta": sum(meta), "meta_median": statistics.median(meta[warmup:]),
                     "wall_median_ms": 1e3 * statistics.median(wall[warmup:])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    rows = launch(job, nprocs=2, args=(a.steps, a.warmup))[0]
    print(f"handshake message: {META_LEN * 8} bytes; medians over {a.steps} steps")
    print(f"{'run':16s} {'1st step B':>10s} {'all steps B':>11s} {'B/step':>8s} "
          f"{'msgs/step':>9s} {'ms/step':>8s}")
    for name, r in rows.items():
        print(f"{name:16s} {r['first_meta']:10d} {r['total_meta']:11d} {r['meta_median']:8.0f} "
              f"{r['meta_median'] / (META_LEN * 8):9.1f} {r['wall_median_ms']:8.1f}")


if __name__ == "__main__":
    main()
