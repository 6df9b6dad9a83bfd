"""The release plan's clock columns: the forest shortcut equals the vector clocks."""

import pytest

from conveyor.schedule import add_comms, build_schedule, schedule_names
from conveyor.schedule.rankplan import _is_forest, _links, peer_columns, vector_clocks


def _general(sched):
    clocks = vector_clocks(sched)
    return [{q: tuple(col) for q, col in enumerate(zip(*clocks[r]))} if clocks[r] else {}
            for r in range(sched.P)]


@pytest.mark.parametrize("name", [n for n in schedule_names() if n != "naive"])
def test_peer_columns_equal_the_vector_clocks_on_every_schedule(name):
    looped = name in ("interleaved-1f1b", "looped-bfs")
    for P in (2, 3, 4, 5):
        for M in (1, 2, 3, 5, 8, 11):
            sched = add_comms(build_schedule(name, P, M))
            cols, full = peer_columns(sched), _general(sched)
            # Line and V placements take the shortcut; a loop of chunks over
            # three or more ranks is a ring and does not.
            assert _is_forest(P, _links(sched)) == (not looped or P == 2)
            for r in range(P):
                assert set(cols[r]) <= set(full[r]) or not full[r]
                for q, col in cols[r].items():
                    assert col == full[r][q], (name, P, M, r, q)


def test_a_ring_of_links_is_not_a_forest():
    assert _is_forest(4, {(0, 1), (1, 2), (2, 3)})
    assert not _is_forest(4, {(0, 1), (1, 2), (2, 3), (0, 3)})


def test_plans_live_on_the_schedule_and_never_travel_with_it():
    import pickle

    from conveyor.schedule.rankplan import plan_rank

    sched = add_comms(build_schedule("1f1b", 4, 8))
    twin = add_comms(build_schedule("1f1b", 4, 8))
    plan = plan_rank(sched, 1, True)
    assert plan_rank(sched, 1, True) is plan          # computed once per object
    assert plan_rank(twin, 1, True) == plan           # an equal schedule plans alike
    copy = pickle.loads(pickle.dumps(sched))
    assert "_memo" not in copy.__dict__ and "_hash" not in copy.__dict__
    assert copy == sched and hash(copy) == hash(sched)


@pytest.mark.parametrize("name", [n for n in schedule_names() if n != "naive"])
def test_first_transfer_is_where_a_rank_first_touches_a_peer(name):
    """Every action before ``first_transfer`` is compute, and no receive is
    posted before it (prepost reaches a receive only from there); the first
    receive is at or after it. The step's agreement overlaps exactly that."""
    from conveyor.schedule.rankplan import plan_rank

    for P in (2, 4):
        sched = add_comms(build_schedule(name, P, 8))
        for r, row in enumerate(sched.actions):
            for prepost in (True, False):
                plan = plan_rank(sched, r, prepost)
                k = plan.first_transfer
                assert all(a.is_compute for a in row[:k]), (name, P, r)
                assert all(plan.post_limit[i] < plan.recvs[0] for i in range(k)) \
                    if plan.recvs else True
                assert k == len(row) or not row[k].is_compute or \
                    plan.post_limit[k] >= plan.recvs[0]
                assert plan.first_recv == (plan.recvs[0] if plan.recvs else len(row))
                assert plan.first_recv >= k


def test_1f1b_first_stage_computes_before_the_agreement_gate_the_others_do_not():
    from conveyor.schedule.rankplan import plan_rank

    sched = add_comms(build_schedule("1f1b", 4, 8))
    assert plan_rank(sched, 0, True).first_transfer == 1  # its first forward, then SEND_F
    assert [plan_rank(sched, r, True).first_transfer for r in (1, 2, 3)] == [0, 0, 0]


def test_the_finishing_rank_is_the_one_whose_last_action_ends_last():
    from conveyor.schedule.deps import replay
    from conveyor.schedule.ir import B
    from conveyor.schedule.rankplan import finishing_rank

    for name in schedule_names():
        for P in (2, 4, 8):
            sched = add_comms(build_schedule(name, P, 8))
            root = finishing_rank(sched)
            rp = replay(sched, lambda r, a: 2.0 if a.kind == B else float(a.is_compute))
            ends = [rp.end_of(row[-1]) for row in sched.actions]
            assert ends[root] == max(ends), (name, P)
    # The first stage runs the last backward of 1F1B and GPipe.
    assert finishing_rank(add_comms(build_schedule("1f1b", 8, 16))) == 0
    assert finishing_rank(add_comms(build_schedule("gpipe", 4, 8))) == 0
