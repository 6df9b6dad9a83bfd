"""The hang table names global ranks, also for the peer a rank waits on."""

from conveyor.runtime.transport.group import RankContext
from conveyor.runtime.procs.hang import Progress, _wrap_comm
from conveyor.schedule.ir import RECV_B, Action

import torch


class _Hooks:
    """Holds what the comm's on_wait hook is given (the real Comm needs a
    process group; this test is about the watch's bookkeeping only)."""

    timeout = None

    def on_wait(self, begin, end):
        self.begin, self.end = begin, end


def test_the_peer_waited_on_is_named_by_its_global_rank_under_dp():
    # Pipeline rank 1 of replica 1 in a dp 2 x pp 2 mesh is global rank 3.
    ctx = RankContext(rank=0, world_size=2, local_rank=2, device=torch.device("cpu"),
                      backend="gloo", launcher="local", dp_rank=1, dp_size=2)
    p, hooks = Progress(step=0), _Hooks()
    _wrap_comm(hooks, p, 60.0, None, ctx.to_global)
    hooks.begin(1, Action(0, RECV_B, 2))  # stage 0 waits on stage 1's gradient
    assert p.peer == 3
    row = p.row(ctx.global_rank, now=p.wait_since)
    assert (row["rank"], row["peer"], row["state"]) == (2, 3, "waiting")
    hooks.end()
    assert p.peer is None
