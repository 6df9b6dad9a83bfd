"""Time Pipeline.save / Pipeline.load and size the checkpoint, at P=1 and P=4.

    .venv/bin/python benchmarks/bench_checkpoint.py [--width 1024] [--layers 8] [--runs 3]

Model: ``layers`` x Linear(width, width) + ReLU, float32, Adam (two moments per
parameter, so the checkpoint holds ~3x the weights). Prints, per P, the bytes
on disk and the median over ``runs`` of the slowest rank's save and load wall
time (save includes its barriers and the rename).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline, launch
def job(ctx, width: int, layers: int, runs: int, root: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])
    pipe = Pipeline(model, loss_fn=lambda o, t: ((o - t) ** 2).mean(),
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3), schedule="gpipe",
                    microbatches=2, ctx=ctx)
    x = torch.randn(8, width)
    pipe.step(x, x)  # Adam's moments exist from the first step
    saves, loads = [], []
    for k in range(runs):
        t = time.perf_counter()
        pipe.save(Path(root) / "ckpt")
        saves.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe.load(Path(root) / "ckpt")
        loads.append(time.perf_counter() - t)
    return {"save": saves, "load": loads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for P in (1, 4):
        with tempfile.TemporaryDirectory() as root:
            args = (a.width, a.layers, a.runs, root)
            ranks = [job(None, *args)] if P == 1 else launch(job, nprocs=P, args=args)
            size = sum(f.stat().st_size for f in (Path(root) / "ckpt").iterdir())
        med = {k: statistics.median(max(r[k][i] for r in ranks) for i in range(a.runs))
               for k in ("save", "load")}
        print(f"P={P}: {size / 2**20:.1f} MiB on disk, save {med['save']:.3f} s, "
              f"load {med['load']:.3f} s (median of {a.runs}, slowest rank)")


if __name__ == "__main__":
    main()
