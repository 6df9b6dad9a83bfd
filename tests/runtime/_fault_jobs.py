"""Rank jobs for the fault tests (test_faults.py, _fault_script.py,
benchmarks/bench_faults.py): a P-rank 1F1B pipeline, M=4, with one fault
planted in stage P // 2 or at its input cut.

Every rank writes its pid to ``pid_dir`` first, so a test can check that no
process is left.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.transport import comm as comm_module
FAULTS = ("kill", "backward", "header", "oversize")
MB = 2  # the micro-batch the fault strikes


def _mark(what: str) -> None:
    """Note the wall-clock time of the fault (for the exit-time figures)."""
    d = os.environ.get("CONVEYOR_FAULT_DIR")
    if d:
        Path(d, "fault_at").write_text(f"{time.time():.6f} {what}")


class KillInForward(nn.Module):
    """SIGKILLs its own process in the forward of micro-batch MB: nothing in
    Python runs after it, as with the OOM killer or ``kill -9``."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        mb, self.calls = self.calls, self.calls + 1
        if mb == MB:
            _mark("kill")
            os.kill(os.getpid(), signal.SIGKILL)
        return x


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mb):
        ctx.mb = mb
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.mb == MB:
            _mark("backward")
            raise FloatingPointError(f"bad gradient in micro-batch {ctx.mb}")
        return g, None


class FailInBackward(nn.Module):
    """Identity whose backward raises on micro-batch MB (a custom autograd
    Function, as a user's fused kernel would be)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        mb, self.calls = self.calls, self.calls + 1
        return _RaiseInBackward.apply(x, mb)


def _bad_header(metas, *, stage):
    """What a peer running other code might send as the shape header: a
    dtype code this conveyor does not know."""
    out = _encode(metas, stage=stage)
    out[1] = 99
    _mark("header")
    return out


_encode = comm_module.encode_meta


def _oversize(comm):
    """Make this rank send micro-batch MB's activation with twice the rows the
    receiver was told (what a peer running other code might do): gloo aborts
    the receiving process, which cannot say a word."""
    isend = comm._isend

    def send(t, dst, tag, action):
        if action.kind == "SEND_F" and action.mb == MB and t.is_floating_point():
            _mark("oversize")
            t = torch.cat([t, t])
        return isend(t, dst, tag, action)

    comm._isend = send


def fault_job(ctx, fault: str, pid_dir: str) -> int:
    """P ranks, one Linear stage each, except stage f = P // 2 which holds the
    fault layer after its Linear; the header fault is rank f-1's, at cut f-1."""
    os.environ["CONVEYOR_FAULT_DIR"] = pid_dir
    (Path(pid_dir) / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    P = ctx.world_size
    f = P // 2
    torch.manual_seed(0)
    layer = {"kill": KillInForward, "backward": FailInBackward}.get(fault, nn.Identity)()
    layers = [nn.Linear(4, 4, dtype=torch.float64) for _ in range(P)]
    layers.insert(f + 1, layer)
    if fault == "header" and ctx.rank == f - 1:
        comm_module.encode_meta = _bad_header
    # oversize: receives posted at their own action, so the receiver is in it
    # when gloo aborts (posted ahead, it would be in whatever action ran then).
    pipe = Pipeline(layers, loss_fn=lambda o, t: ((o - t) ** 2).mean(), optimizer=None,
                    schedule="1f1b", microbatches=4, ctx=ctx,
                    balance=[2 if s == f else 1 for s in range(P)],
                    config=PipelineConfig(timeout_s=60, prepost=fault != "oversize"))
    if fault == "oversize" and ctx.rank == f - 1:
        _oversize(pipe.comm)
    x = torch.randn(8, 4, dtype=torch.float64)
    pipe.step(x, x)
    return 0
