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
