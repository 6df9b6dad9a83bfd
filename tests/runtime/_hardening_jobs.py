"""Rank jobs for the hardening tests: orphans, listeners, agreement, returns."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

from conveyor.runtime import AgreementError, Pipeline, PipelineConfig


def _loss(o, t):
    return ((o - t) ** 2).mean()


def _mlp(n: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(n)])


def forever_job(ctx, pid_dir: str) -> int:
    """Write this rank's pid, then train until killed (rank 0 marks the first step)."""
    Path(pid_dir, f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    pipe = Pipeline(_mlp(), loss_fn=_loss, optimizer=None, microbatches=2, ctx=ctx)
    x = torch.randn(8, 4)
    n = 0
    while True:
        pipe.step(x, x)
        n += 1
        if n == 1 and ctx.rank == 0:
            Path(pid_dir, "stepping").write_text("1")


def _listening() -> dict[int, str]:
    """inode -> "addr:port" of every listening TCP socket in this network namespace."""
    out = {}
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out[int(f[9])] = f"{socket.inet_ntop(fam, raw)}:{int(hexport, 16)}"
    return out


def sockets_of(pid: int) -> list[str]:
    """Listening addresses held by process ``pid``."""
    table = _listening()
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in table:
                found.append(table[inode])
    return found


def listeners_job(ctx) -> dict:
    """After a step (every gloo pair is up), the listening sockets of this rank
    and of the launching parent."""
    pipe = Pipeline(_mlp(), loss_fn=_loss, optimizer=None, microbatches=2, ctx=ctx)
    x = torch.randn(8, 4)
    pipe.step(x, x)
    return {"rank": sockets_of(os.getpid()), "parent": sockets_of(os.getppid()),
            "master_port": int(os.environ["MASTER_PORT"]), "tensors": tensor_job(ctx)}


def tensor_job(ctx) -> dict:
    """Tensors, nested, one of them non-leaf and one requiring grad."""
    w = torch.full((3,), float(ctx.rank), requires_grad=True)
    return {"rank": ctx.rank, "t": torch.arange(4) + ctx.rank, "nested": [(w * 2,)], "w": w}


class _FailsOnRank0(torch.nn.Linear):
    """A linear layer whose forward raises on rank 0 only."""

    def forward(self, x):
        if torch.distributed.get_rank() == 0:
            raise RuntimeError("the first stage's forward fails")
        return super().forward(x)


def _case(ctx, name, build, run) -> dict:
    """Build and run one case on every rank; every rank must fail alike."""
    try:
        pipe = build()
        run(pipe)
    except AgreementError as e:
        return {"case": name, "field": e.field, "values": {str(k): str(v) for k, v in
                                                            e.values.items()},
                "message": str(e)}
    return {"case": name, "field": None, "message": ""}


def agreement_job(ctx, out: str) -> int:
    """Every disagreement in turn; each fails on every rank at once and the run
    goes on. Rank 0 writes the results, then runs one step more than rank 1:
    the launch must fail with "rank 1 finished its function ..."."""
    r = ctx.rank
    x8, x6 = torch.randn(8, 4), torch.randn(6, 4)

    def pipe(model=None, *, M=2, schedule="1f1b", config=None):
        return Pipeline(model if model is not None else _mlp(), loss_fn=_loss, optimizer=None,
                        microbatches=M, schedule=schedule, ctx=ctx, config=config)

    def steps(*xs):
        return lambda p: [p.step(x, x) for x in xs]

    rows = [
        _case(ctx, "M", lambda: pipe(M=2 if r == 0 else 4), steps(x8)),
        _case(ctx, "batch", lambda: pipe(), steps(x8 if r == 0 else x6)),
        _case(ctx, "batch on step 2", lambda: pipe(), steps(x8, x8 if r == 0 else x6)),
        _case(ctx, "schedule", lambda: pipe(schedule="1f1b" if r == 0 else "gpipe"), steps(x8)),
        _case(ctx, "model", lambda: pipe(_mlp(4 if r == 0 else 5)), steps(x8)),
        _case(ctx, "width", lambda: pipe(torch.nn.Sequential(
            torch.nn.Linear(4, 4), torch.nn.Linear(4, 4 + r), torch.nn.Linear(4 + r, 4),
            torch.nn.Linear(4, 4))), steps(x8)),
        _case(ctx, "seed, checked", lambda: pipe(_mlp(seed=r), config=PipelineConfig(
            check_weights=True)), steps(x8)),
        _case(ctx, "seed, unchecked", lambda: pipe(_mlp(seed=r)), steps(x8)),
        _case(ctx, "step vs predict", lambda: pipe(),
              lambda p: p.step(x8, x8) if r == 0 else p.predict(x8)),
        # The first stage computes before the agreement completes: its failure
        # there still completes it, and the disagreement is what every rank reports.
        _case(ctx, "batch, first forward fails", lambda: pipe(torch.nn.Sequential(
            _FailsOnRank0(4, 4), *_mlp(3))), steps(x8 if r == 0 else x6)),
    ]
    if r == 0:
        Path(out).write_text(json.dumps(rows))
    p = pipe()
    p.step(x8, x8)
    if r == 0:
        p.step(x8, x8)  # rank 1 has returned: this step must fail at once
    return 0
