"""torch.distributed.pipelining's own orders, built in-process.

torch's multi-stage schedule classes compute their whole ``pipeline_order``
(every rank's compute actions) in ``__init__`` from the stages' indices and
the group size alone; nothing runs. So each rank's schedule object is built
with minimal stage objects that carry exactly the attributes that
computation reads (stage index, number of stages, group size and rank, a
trivial ``nn.Identity`` as the submodule): no process group, no mock of
torch's code, and the order read is the one torch's runtime executes.
Single-stage classes (GPipe, 1F1B) expose theirs through
``_get_pipeline_order()`` the same way.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
import torch.distributed.pipelining.schedules as ts

from conveyor.schedule.ir import Schedule, schedule_from_rows

__all__ = ["TORCH_PEERS", "torch_order"]

# conveyor name -> (torch class, chunks per rank, V placement)
TORCH_PEERS = {
    "gpipe": (ts.ScheduleGPipe, 1, False),
    "1f1b": (ts.Schedule1F1B, 1, False),
    "interleaved-1f1b": (ts.ScheduleInterleaved1F1B, 2, False),
    "looped-bfs": (ts.ScheduleLoopedBFS, 2, False),
    "zb-h1": (ts.ScheduleInterleavedZeroBubble, 1, False),
    "zbv": (ts.ScheduleZBVZeroBubble, 2, True),
    "dualpipev": (ts.ScheduleDualPipeV, 2, True),
}


def _stage(P: int, S: int, r: int, s: int):
    return SimpleNamespace(num_stages=S, group_size=P, group_rank=r, stage_index=s,
                           is_first=s == 0, is_last=s == S - 1,
                           stage_index_to_group_rank=None, submod=torch.nn.Identity())


_OVERLAP = re.compile(r"^\((.*)\)OVERLAP_F_B$")


def _compute(text: str) -> list[str]:
    """conveyor cells for one torch action: an overlapped F&B pair becomes its
    two actions back to back (as conveyor runs it unfused); actions other
    than compute (REDUCE_GRAD, ...) are dropped."""
    m = _OVERLAP.match(text)
    if m:
        return [c for part in m.group(1).split(";") for c in _compute(part)]
    return [text] if re.match(r"^\d+[FBIW]\d+$", text) else []


def torch_order(name: str, P: int, M: int) -> Schedule:
    """torch's order for conveyor's schedule ``name``; torch's ValueError when
    torch refuses this P and M."""
    cls, v, vee = TORCH_PEERS[name]
    S = P * v
    rows = []
    for r in range(P):
        ids = [r, 2 * P - 1 - r] if vee else [r + c * P for c in range(v)]
        if issubclass(cls, ts.PipelineScheduleSingle):
            sched = cls(_stage(P, S, r, ids[0]), M)
            order = sched._get_pipeline_order()
        else:
            sched = cls([_stage(P, S, r, s) for s in ids], M)
            order = sched.pipeline_order
        rows.append([cell for a in order[r] if a is not None for cell in _compute(str(a))])
    return schedule_from_rows(f"torch-{name}", rows, M=M)
