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


def test_a_collective_wait_names_the_collective_its_ranks_and_who_is_not_in_it():
    from conveyor.runtime.procs.hang import format_table

    p = Progress(collective="the tie sum all-reduce of w over ranks 0, 2", members=(0, 2),
                 timeout_s=3.0)
    p.wait_since = 100.0
    rows = [p.row(0, now=103.5),
            Progress(step=4, doing=Action(1, RECV_B, 2), peer=0, wait_since=101.0).row(1, 103.5),
            {"rank": 2, "state": "stopped", "action": "stopped by a signal (SIGSTOP, SIGTSTP)",
             "last": ""}]
    text = format_table(rows, reporter=0, timeout_s=3.0)
    assert text.startswith("conveyor: hang: rank 0 waited in the tie sum all-reduce of w over "
                           "ranks 0, 2 longer than 3 s")
    assert "\nnot in it: rank 2 (stopped)\n" in text  # rank 1 is not in the tie's group
    assert rows[0]["for_s"] == 3.5 and rows[0]["state"] == "waiting"


def test_last_words_name_the_collective_a_dead_rank_waited_in(tmp_path):
    from conveyor.runtime.procs.lastwords import LastWords, read

    lw = LastWords(tmp_path / "rank1")
    lw.collective(b"the loss broadcast over ranks 0, 1")
    assert read(tmp_path, 1) == " while waiting in the loss broadcast over ranks 0, 1"
    lw.idle()
    assert read(tmp_path, 1) == ""
