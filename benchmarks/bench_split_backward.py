"""Time I, W and B of one stage, and the host cost of posting a receive.

    .venv/bin/python benchmarks/bench_split_backward.py [--repeats 30] [--out benchmarks/split_backward.md]

Part 1, split backward: for a Linear stack and a transformer block (float32,
CPU, one thread), the median over ``--repeats`` runs of the wall time of
    B  torch.autograd.backward from the stage output (input and weights),
    I  conveyor.runtime.splitgrad.backward_input (input gradient only),
    W  the WeightGrad that I returned (weight gradients only),
each on a fresh forward (the forward is not timed). The target is
(I + W) / B <= 1.05.

Part 2, receive posting (``--recv``): two gloo processes; rank 1 posts and
waits ``--recv-n`` receives of a (64, 256) float32 tensor through conveyor's
Comm, with and without its buffer pool, and reports the median host time per
receive spent in ``post_act`` (the allocation and the irecv call).

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

from conveyor.runtime.splitgrad import backward_input


def linear_stack(d: int = 1024, n: int = 6) -> nn.Module:
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Linear(d, d), nn.Tanh())])


def transformer_block(d: int = 256) -> nn.Module:
    return nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)


def _median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def time_split(model: nn.Module, shape: tuple[int, ...], repeats: int) -> dict:
    """Median wall times (ms) of B, I and W on ``model`` for an input of ``shape``."""
    params = list(model.parameters())
    x0 = torch.randn(*shape)
    g = torch.randn_like(model(x0))
    tb, ti, tw = [], [], []

    def fresh():
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_(True)
        return x, model(x)

    def full():
        x, y = fresh()
        t0 = time.perf_counter()
        torch.autograd.backward([y], [g])
        return time.perf_counter() - t0

    def split():
        x, y = fresh()
        t0 = time.perf_counter()
        _, pending = backward_input([y], [g], [x], params)
        t1 = time.perf_counter()
        pending.run()
        return t1 - t0, time.perf_counter() - t1

    for k in range(repeats + 3):  # 3 warm-up rounds
        # Alternate which goes first, so that neither always finds the caches warm.
        if k % 2:
            b, (i, w) = full(), split()
        else:
            (i, w), b = split(), full()
        if k >= 3:
            tb.append(b)
            ti.append(i)
            tw.append(w)
    b, i, w = _median_ms(tb), _median_ms(ti), _median_ms(tw)
    return {"B": b, "I": i, "W": w, "ratio": (i + w) / b}


def split_table(repeats: int) -> list[str]:
    torch.manual_seed(0)
    cases = [("Linear stack, 6 x Linear(1024, 1024) + Tanh, batch 256", linear_stack(), (256, 1024)),
             ("Transformer block, d=256, 4 heads, ffn 1024, (8, 128, 256)", transformer_block(),
              (8, 128, 256))]
    lines = ["| workload | B (ms) | I (ms) | W (ms) | (I+W)/B | target <= 1.05 |",
             "|---|---:|---:|---:|---:|---|"]
    for name, model, shape in cases:
        r = time_split(model, shape, repeats)
        ok = "met" if r["ratio"] <= 1.05 else "MISSED"
        lines.append(f"| {name} | {r['B']:.2f} | {r['I']:.2f} | {r['W']:.2f} | "
                     f"{r['ratio']:.3f} | {ok} |")
    return lines


# -- per-receive host cost ---------------------------------------------------------

def _recv_rank(ctx, n: int, shape: tuple[int, ...], pools: list[bool]) -> dict:
    from conveyor.runtime.comm import Comm
    from conveyor.schedule.ir import RECV_F, Action

    torch.set_num_threads(1)
    out = {}
    for pool in pools:
        comm = Comm(rank=ctx.rank, placement=(0, 1), device=ctx.device, timeout_s=60,
                    pool=pool)
        x = torch.randn(*shape)
        costs = []
        for mb in range(n):
            a = Action(1, RECV_F, mb)
            if ctx.rank == 0:
                for w, _ in comm.send_act([x], cut=0, mb=mb, size=shape[0], action=a):
                    w.wait()
                continue
            if not comm.act_meta_known(0, shape[0]):
                comm.recv_act_meta(cut=0, size=shape[0], action=a)
            t0 = time.perf_counter()
            pend = comm.post_act(cut=0, mb=mb, size=shape[0], action=a)
            costs.append(time.perf_counter() - t0)
            comm.wait(pend.works, peer=0, action=a)
            comm.release(pend.buffers)
        out["pool" if pool else "fresh"] = 1e3 * statistics.median(costs) if costs else None
        torch.distributed.barrier()
    return out


def recv_table(n: int) -> list[str]:
    from conveyor.runtime import launch

    shape = (64, 256)
    res = launch(_recv_rank, nprocs=2, args=(n, shape, [False, True]))[1]
    return ["| receive of (64, 256) float32 | host time in post_act, median of "
            f"{n} (ms) |", "|---|---:|",
            f"| fresh buffer per receive | {res['fresh']:.4f} |",
            f"| buffer pool keyed by (peer, shape, dtype) | {res['pool']:.4f} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--recv", action="store_true", help="also time receive posting")
    ap.add_argument("--recv-n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "split_backward.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    lines = ["# Split backward: I + W against B", "",
             f"CPU, float32, {args.threads} thread(s), median of {args.repeats} runs each "
             f"(3 warm-up runs), torch {torch.__version__}, {os.cpu_count()} cores, load "
             f"average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the "
             f"start. Wall time of each phase on a fresh forward.", ""]
    lines += split_table(args.repeats)
    if args.recv:
        lines += ["", "## Host cost of posting a receive", "",
                  "Two gloo processes on this machine, one thread each; load as above.", ""]
        lines += recv_table(args.recv_n)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
