"""Time I, W and B of one stage.

    .venv/bin/python benchmarks/bench_split_backward.py [--repeats 30] [--out FILE]

(default FILE: benchmarks/split_backward.md)

For a Linear stack and a transformer block (float32, CPU, one thread), the
median over ``--repeats`` runs of the time, as CPU time of the thread and as
wall time (CPU time is the steadier on a loaded machine), of
    B  torch.autograd.backward from the stage output (input and weights),
    I  conveyor.runtime.execute.splitgrad.backward_input (input gradient only),
    W  the WeightGrad that I returned (weight gradients only),
each on a fresh forward (the forward is not timed). The target is
(I + W) / B <= 1.05.

Writes a markdown table to ``--out`` and prints it. Timing figures depend on
the machine's load: the table states the load average when it ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conveyor.runtime.execute.splitgrad import backward_input


def linear_stack(d: int = 1024, n: int = 6) -> nn.Module:
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Linear(d, d), nn.Tanh())])


def transformer_block(d: int = 256) -> nn.Module:
    return nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)


def _median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def _now() -> tuple[float, float]:
    # CPU time of this thread (the autograd engine runs CPU work on the calling
    # thread; with one intra-op thread all of it) and wall time.
    return time.thread_time(), time.perf_counter()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    c, w = _now()
    return c - t0[0], w - t0[1]


def time_split(model: nn.Module, shape: tuple[int, ...], repeats: int) -> dict:
    """Median CPU and wall times (ms) of B, I and W on ``model`` for an input
    of ``shape``: {"cpu": {"B", "I", "W", "ratio"}, "wall": {...}}."""
    params = list(model.parameters())
    x0 = torch.randn(*shape)
    g = torch.randn_like(model(x0))
    runs: dict[str, list] = {"B": [], "I": [], "W": []}

    def fresh():
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_(True)
        return x, model(x)

    def full():
        x, y = fresh()
        t0 = _now()
        torch.autograd.backward([y], [g])
        return _since(t0)

    def split():
        x, y = fresh()
        t0 = _now()
        _, pending = backward_input([y], [g], [x], params)
        i = _since(t0)
        t1 = _now()
        pending.run()
        return i, _since(t1)

    for k in range(repeats + 3):  # 3 warm-up rounds
        # Alternate which goes first, so that neither always finds the caches warm.
        if k % 2:
            b, (i, w) = full(), split()
        else:
            (i, w), b = split(), full()
        if k >= 3:
            runs["B"].append(b)
            runs["I"].append(i)
            runs["W"].append(w)
    out = {}
    for c, clock in enumerate(("cpu", "wall")):
        med = {k: _median_ms([v[c] for v in vals]) for k, vals in runs.items()}
        med["ratio"] = (med["I"] + med["W"]) / med["B"]
        out[clock] = med
    return out


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket.__name__ in ("mm", "addmm", "bmm", "baddbmm")
        return func(*args, **(kwargs or {}))


def count_matmuls(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(matmuls of B, matmuls of I + W) on one backward of ``model``."""
    params = list(model.parameters())
    counts = []
    for split in (False, True):
        x = torch.randn(*shape, requires_grad=True)
        y = model(x)
        with _CountMatmuls() as c:
            if split:
                backward_input([y], [torch.ones_like(y)], [x], params)[1].run()
            else:
                torch.autograd.backward([y], [torch.ones_like(y)])
        counts.append(c.n)
    return counts[0], counts[1]


def split_table(repeats: int) -> list[str]:
    torch.manual_seed(0)
    cases = [("Linear stack, 6 x Linear(1024, 1024) + Tanh, batch 256", linear_stack(),
              (256, 1024)),
             ("Transformer block, d=256, 4 heads, ffn 1024, (8, 128, 256)", transformer_block(),
              (8, 128, 256))]
    lines = ["| workload | clock | B (ms) | I (ms) | W (ms) | (I+W)/B | target <= 1.05 "
             "| matmuls B | matmuls I+W |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, model, shape in cases:
        res = time_split(model, shape, repeats)
        mb, miw = count_matmuls(model, shape)
        for clock in ("cpu", "wall"):
            r = res[clock]
            ok = "met" if r["ratio"] <= 1.05 else "MISSED"
            lines.append(f"| {name} | {clock} | {r['B']:.2f} | {r['I']:.2f} | {r['W']:.2f} | "
                         f"{r['ratio']:.3f} | {ok} | {mb} | {miw} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "split_backward.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    lines = ["# Split backward: I + W against B", "",
             f"CPU, float32, {args.threads} thread(s), median of {args.repeats} runs each "
             f"(3 warm-up runs), torch {torch.__version__}, {os.cpu_count()} cores, load "
             f"average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the "
             f"start. Each phase timed on a fresh forward; 'cpu' is the thread's CPU time, 'wall' "
             f"the elapsed time. Matmuls: aten mm/addmm/bmm/baddbmm calls in one backward.", ""]
    lines += split_table(args.repeats)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
