"""Every registered schedule runs exactly through the runtime (gloo, real
processes): loss, every gradient and every updated parameter equal the
unsplit model's in float64, for P in {2, 4} and M in {1, 2, 3, 4, 8}
(odd M and M < P included). One launch per P runs all of them.
"""

from __future__ import annotations

import pytest

from conveyor.runtime import launch
from conveyor.schedule import build_schedule, schedule_names
from tests.runtime import _jobs, _models

pytestmark = pytest.mark.runtime

TOL = 1e-10
MS = (1, 2, 3, 4, 8)
_RUNS: dict[int, dict] = {}


def _configs() -> list[dict]:
    # One step each: the reference comparison after the update covers the
    # optimizer too; batch 16 splits unevenly for M = 3.
    return [{"id": f"{name}-M{M}", "schedule": name, "M": M, "dtype": "float64",
             "batch": 16, "steps": 1, "depth": 8}
            for name in schedule_names() for M in MS]


def _run(P: int) -> dict:
    if P not in _RUNS:
        cfgs = _configs()
        rows = [row for per_rank in launch(_jobs.exactness_job, nprocs=P, args=(cfgs,))
                for row in per_rank]
        _RUNS[P] = {"cfgs": {c["id"]: c for c in cfgs},
                    "rows": {c["id"]: [row for row in rows if row["id"] == c["id"]]
                             for c in cfgs}}
    return _RUNS[P]


@pytest.mark.parametrize("P", [2, 4])
def test_every_schedule_matches_the_unsplit_model(P):
    run = _run(P)
    assert all(run["rows"].values()), "every configuration reported"
    all_params = {n for n, _ in _models.mlp(8).named_parameters()}
    for cid, rows in run["rows"].items():
        cfg = run["cfgs"][cid]
        sched = build_schedule(cfg["schedule"], P, cfg["M"])
        assert len(rows) == P, cid
        # the run used the schedule's placement (V and loop placements included)
        assert rows[0]["placement"] == list(sched.placement), cid
        for row in rows:
            where = f"{cid} rank {row['rank']}"
            assert row["loss_err"] <= TOL, where
            assert row["grad_err"] <= TOL, where
            assert row["param_err"] <= TOL, where
        owned = [n for row in rows for n in row["params"]]
        assert sorted(owned) == sorted(all_params), cid


def test_split_and_v_schedules_are_really_in_the_grid():
    kinds = {n: {a.kind for _, _, a in build_schedule(n, 4, 8)} for n in schedule_names()}
    assert {"I", "W"} <= kinds["zb-h1"] and {"I", "W"} <= kinds["zbv"]
    assert build_schedule("dualpipev", 4, 8).placement == (0, 1, 2, 3, 3, 2, 1, 0)
    assert build_schedule("interleaved-1f1b", 4, 8).placement == (0, 1, 2, 3) * 2
