"""Check that pipelined gradients equal the unsplit model's, on however many
ranks this runs: P = world size. The script the multi-node recipes run.

    python examples/check_exact.py [OUT.json]                 # 4 local processes
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 --rdzv-id job1 examples/check_exact.py [OUT.json]

Every rank steps a float64 MLP through the pipeline and, on the same batch, an
unsplit copy in its own process, for a few schedules and batch sizes; the
driver (rank 0) prints the largest relative errors of the loss and of every
gradient over all ranks, plus where each rank ran, and writes them to OUT.json.
Exit code 1 if an error exceeds 1e-10.
"""

import json
import os
import socket
import sys

import torch
from torch import nn

from conveyor.runtime import Pipeline, is_driver, launch
CASES = [("gpipe", 4, 16), ("1f1b", 4, 13), ("1f1b", 8, 16)]  # schedule, M, batch
TOL = 1e-10


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3)).double()  # 9 layers


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item() if b.norm() > 0 else (a - b).norm().item()


def check(ctx) -> dict:
    torch.set_num_threads(1)
    # GROUP_RANK: the torchrun agent (node) this rank belongs to; None locally
    out = {"rank": ctx.rank, "node": os.environ.get("GROUP_RANK"),
           "host": socket.gethostname(), "backend": ctx.backend, "launcher": ctx.launcher,
           "world": ctx.world_size, "loss_err": 0.0, "grad_err": 0.0, "params": 0}
    for schedule, M, B in CASES:
        model, ref = mlp(), mlp()
        pipe = Pipeline(model, loss_fn=nn.functional.cross_entropy, optimizer=None,
                        schedule=schedule, microbatches=M, ctx=ctx)
        g = torch.Generator().manual_seed(B)
        x = torch.randn(B, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (B,), generator=g)
        loss = pipe.forward_backward(x, y).loss
        ref_loss = nn.functional.cross_entropy(ref(x), y)
        ref_loss.backward()
        out["loss_err"] = max(out["loss_err"], abs(loss - ref_loss.item()) / ref_loss.item())
        local = {id(p) for p in pipe.params}
        for p, q in zip(model.parameters(), ref.parameters()):
            if id(p) in local:
                out["grad_err"] = max(out["grad_err"], rel(p.grad.cpu(), q.grad))
                out["params"] += 1
    return out


if __name__ == "__main__":
    ranks = launch(check, nprocs=4)
    if is_driver():  # the parent, or rank 0 under torchrun: print and write once
        summary = {"world": len(ranks), "ranks": ranks,
                   "loss_err": max(r["loss_err"] for r in ranks),
                   "grad_err": max(r["grad_err"] for r in ranks)}
        print(f"P={len(ranks)} launcher={ranks[0]['launcher']} loss_err={summary['loss_err']:.2e} "
              f"grad_err={summary['grad_err']:.2e} params={sum(r['params'] for r in ranks)}")
        if len(sys.argv) > 1:
            with open(sys.argv[1], "w") as f:
                json.dump(summary, f)
        sys.exit(0 if max(summary["loss_err"], summary["grad_err"]) <= TOL else 1)
