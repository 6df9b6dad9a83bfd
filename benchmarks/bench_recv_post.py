"""Host cost of posting one receive through conveyor's Comm.

    .venv/bin/python benchmarks/bench_recv_post.py [--n 2000] [--label after]

Two gloo processes on this machine, one thread each. Rank 0 sends ``--n``
activations of each shape; rank 1 posts each receive with ``Comm.post_act``
(buffer + irecv), waits for it, and hands the buffer back (``Comm.release``,
where the Comm has a buffer pool). Reported: the median and the 90th
percentile of the host time spent inside ``post_act``, in microseconds, with
the pool off and on.

Runs against whatever ``conveyor`` is importable, so the same command on an
older checkout (``PYTHONPATH=old-tree``) gives the "before" figures (that Comm
has no pool: only the first row).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import torch

SHAPES = [(64, 256), (256, 1024)]


def _rank(ctx, n: int) -> list:
    from conveyor.runtime.transport.comm import Comm
    from conveyor.schedule.ir import RECV_F, Action

    torch.set_num_threads(1)
    has_pool = "pool" in inspect.signature(Comm).parameters
    rows = []
    for pool in ([False, True] if has_pool else [None]):
        for shape in SHAPES:
            kw = {} if pool is None else {"pool": pool}
            comm = Comm(rank=ctx.rank, placement=(0, 1), device=ctx.device, timeout_s=60, **kw)
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
                if pool:
                    comm.release(pend.buffers, 0)
                del pend
            torch.distributed.barrier()
            if costs:
                costs.sort()
                rows.append({"pool": pool, "shape": shape,
                             "median_us": 1e6 * statistics.median(costs),
                             "p90_us": 1e6 * costs[int(0.9 * len(costs))]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    from conveyor.runtime import launch
    load = os.getloadavg()
    rows = launch(_rank, nprocs=2, args=(args.n,))[1]
    print(f"{args.label} load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
          f"{args.n} receives per row, torch {torch.__version__}")
    print("| buffers | shape (float32) | median (us) | p90 (us) |\n|---|---|---:|---:|")
    names = {None: "fresh per receive (no pool)", False: "pool off", True: "pool on"}
    for r in rows:
        print(f"| {names[r['pool']]} | {r['shape']} | {r['median_us']:.1f} | {r['p90_us']:.1f} |")


if __name__ == "__main__":
    main()
