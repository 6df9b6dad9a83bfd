"""Pipelined training equals unsplit training, on real processes (gloo, CPU).

One launch per P runs every (schedule, M, dtype, batch) configuration: each
rank steps the pipeline and a single-process reference on the same batches and
reports the largest relative errors of the loss, of each of its parameters'
gradients, and of each parameter after the optimizer step.
"""

from __future__ import annotations

import pytest
import torch

from conveyor.runtime import launch
from conveyor.runtime.transport.comm import META_LEN
from conveyor.schedule import Action, Schedule, build_schedule, save_schedule
from conveyor.schedule.ir import B, F, I, W
from conveyor.sim import Timeline
from tests.runtime import _jobs, _models

pytestmark = pytest.mark.runtime

TOL = {"float64": 1e-10, "float32": 1e-5}
SCHEDULES = ["naive", "gpipe", "1f1b"]
STEPS = 3


def grid(P: int) -> list[dict]:
    cfgs = []
    for name in SCHEDULES:
        for M in (1, 2, 4, 8):
            for dtype in ("float64", "float32"):
                cfgs.append({"id": f"{name}-M{M}-{dtype}", "schedule": name, "M": M,
                             "dtype": dtype, "batch": 16, "steps": STEPS})
        for M in (4, 8):  # 13 samples: sizes 4,3,3,3 and 2,2,2,2,2,1,1,1
            cfgs.append({"id": f"{name}-M{M}-B13", "schedule": name, "M": M,
                         "dtype": "float64", "batch": 13, "steps": STEPS})
    cfgs.append({"id": "1f1b-M8-recorded", "schedule": "1f1b", "M": 8, "dtype": "float64",
                 "batch": 16, "steps": STEPS, "record": True})
    return cfgs


def split_backward_1f1b(P: int, M: int) -> Schedule:
    """1F1B with each B split into I (in B's place) and W (all at the end)."""
    base = build_schedule("1f1b", P, M)
    rows = []
    for row in base.actions:
        new = [Action(a.stage, I, a.mb) if a.kind == B else a for a in row]
        new += [Action(a.stage, W, a.mb) for a in row if a.kind == B]
        rows.append(tuple(new))
    return Schedule("1f1b-split", P, M, tuple(rows))


def v_gpipe(M: int) -> Schedule:
    """4 stages on 2 ranks, V-shaped (rank 0: stages 0 and 3, rank 1: 1 and 2),
    fill-drain: exercises two chunks per rank and an in-memory cut (1 -> 2)."""
    r0 = [Action(0, F, mb) for mb in range(M)] + [Action(3, F, mb) for mb in range(M)] + \
         [Action(3, B, mb) for mb in range(M)] + [Action(0, B, mb) for mb in range(M)]
    r1 = [Action(1, F, mb) for mb in range(M)] + [Action(2, F, mb) for mb in range(M)] + \
         [Action(2, B, mb) for mb in range(M)] + [Action(1, B, mb) for mb in range(M)]
    return Schedule("v-gpipe", 2, M, (tuple(r0), tuple(r1)), placement=(0, 1, 1, 0))


def extra_p2(tmp_dir) -> list[dict]:
    csv = save_schedule(build_schedule("1f1b", 2, 4), tmp_dir / "1f1b.csv")
    return [
        {"id": "tuple-cut", "schedule": "1f1b", "M": 4, "model": "tuple", "balance": [2, 2],
         "batch": 12, "steps": STEPS},
        {"id": "split-backward", "schedule": split_backward_1f1b(2, 4), "batch": 16,
         "steps": STEPS},
        {"id": "v-placement", "schedule": v_gpipe(4), "batch": 16, "steps": STEPS},
        {"id": "from-csv", "schedule": str(csv), "batch": 16, "steps": STEPS},
        {"id": "batch-shrinks", "schedule": "gpipe", "M": 4, "batch": 16, "steps": STEPS,
         "batches": [16, 16, 13]},
    ]


_RUNS: dict[int, dict] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """P -> {config id: [row of each rank]}, one launch per P, run lazily."""
    def get(P: int) -> dict:
        if P not in _RUNS:
            cfgs = grid(P) + (extra_p2(tmp_path_factory.mktemp("sched")) if P == 2 else [])
            per_rank = launch(_jobs.exactness_job, nprocs=P, args=(cfgs,))
            by_id: dict[str, list] = {}
            for rows in per_rank:
                for row in rows:
                    by_id.setdefault(row["id"], []).append(row)
            _RUNS[P] = {"cfgs": {c["id"]: c for c in cfgs}, "rows": by_id}
        return _RUNS[P]
    return get


@pytest.mark.parametrize("P", [1, 2, 4])
def test_loss_gradients_and_updates_match_unsplit_model(runs, P):
    run = runs(P)
    assert set(run["rows"]) == set(run["cfgs"])
    all_params = {n for n, _ in _models.mlp(8).named_parameters()}
    for cid, rows in run["rows"].items():
        cfg = run["cfgs"][cid]
        tol = TOL[cfg.get("dtype", "float64")]
        assert len(rows) == P
        for row in rows:
            where = f"{cid} rank {row['rank']}"
            assert row["loss_err"] <= tol, where
            assert row["grad_err"] <= tol, where
            assert row["param_err"] <= tol, where
            # The loss reaches every rank, not only the last one.
            assert row["losses"] == rows[-1]["losses"], where
        # Every parameter is checked, on exactly one rank.
        owned = [n for row in rows for n in row["params"]]
        assert len(owned) == len(set(owned)), cid
        if cfg.get("model") != "tuple":
            assert set(owned) == all_params, cid


def test_errors_would_be_caught():
    """The reference comparison is sensitive: a wrongly weighted micro-batch
    (plain mean of micro-batch losses, B=13, M=4) is far outside tolerance."""
    model = _models.mlp(8)
    x, y = _models.batch(13)
    whole = _models.loss_fn(model(x), y)
    parts = [_models.loss_fn(model(a), b) for a, b in zip(torch.split(x, [4, 3, 3, 3]),
                                                            torch.split(y, [4, 3, 3, 3]))]
    wrong = sum(parts) / 4
    right = sum(p * len(a) / 13 for p, a in zip(parts, torch.split(x, [4, 3, 3, 3])))
    assert abs((wrong - whole).item()) / whole.item() > 1e-6
    assert abs((right - whole).item()) / whole.item() < 1e-12


@pytest.mark.parametrize("P", [2, 4])
def test_only_cut_activations_cross(runs, P):
    """Per step, the bytes sent equal 2 x (activation bytes at every cut, all
    micro-batches): forward activations plus their gradients, nothing more.
    The only other traffic is the handshake (first step of a size) and two
    exchanges of point-to-point messages, no collective: the step agreement
    and the step's end (``_jobs.exchange_bytes``)."""
    run = runs(P)
    for cid, rows in run["rows"].items():
        cfg = run["cfgs"][cid]
        place = rows[0]["placement"]
        crossing = sum(place[c] != place[c + 1] for c in range(len(place) - 1))
        for k in range(STEPS):
            if cfg.get("record") and k == STEPS - 1:
                continue  # gathering the timeline is extra traffic, by design
            steps = [row["steps"][k] for row in rows]
            expected = steps[0]["expected_cut_bytes"]
            assert expected > 0
            assert sum(s["sent_bytes"] for s in steps) == expected, (cid, k)
            assert sum(s["recv_bytes"] for s in steps) == expected, (cid, k)
            # What torch.distributed saw beyond what the comm layer counted.
            extra = sum(s["p2p_bytes"] - s["sent_bytes"] - s["meta_bytes"] for s in steps)
            assert extra == _jobs.exchange_bytes(P), (cid, k, extra)
            for s in steps:
                assert s["collective_bytes"] == 0, (cid, k)
            meta = sum(s["meta_bytes"] for s in steps)
            if k == 0:
                new_sizes = len(set(steps[0]["sizes"]))
                assert meta == crossing * new_sizes * META_LEN * 8, (cid, k)
            elif not cfg.get("batches"):
                assert meta == 0, (cid, k)


def test_handshake_reruns_when_the_micro_batch_size_changes(runs):
    rows = runs(2)["rows"]["batch-shrinks"]
    meta = [sum(row["steps"][k]["meta_bytes"] for row in rows) for k in range(STEPS)]
    # Step 0: size 4 is new; step 1: nothing new; step 2 (B=13: 4,3,3,3): size 3 is new.
    assert meta == [META_LEN * 8, 0, META_LEN * 8]


@pytest.mark.parametrize("P", [2, 4])
def test_measured_timeline(runs, P):
    rows = runs(P)["rows"]["1f1b-M8-recorded"]
    assert all(abs(row["clock_offset"]) < 0.05 for row in rows)  # one host: clocks agree
    tl = Timeline.from_dict(rows[0]["timeline"])
    assert (tl.source, tl.unit, tl.P, tl.M, tl.S) == ("measured", "s", P, 8, P)
    sched = build_schedule("1f1b", P, 8)
    for r in range(P):
        # Each rank's compute events are exactly its schedule, in order, not overlapping.
        events = tl.rank_events(r)
        assert [e.action for e in events] == list(sched.actions[r])
        for a, b in zip(events, events[1:]):
            assert a.end <= b.start + 1e-9
    assert {e.action.kind for e in tl.events} >= {"F", "B", "RECV_F", "SEND_F", "RECV_B"}
    # Causality across ranks holds on the aligned clock (up to alignment error).
    end = {e.action: e.end for e in tl.events}
    start = {e.action: e.start for e in tl.events}
    slack = 2e-3
    for s in range(P - 1):
        for mb in range(8):
            assert end[Action(s, F, mb)] <= start[Action(s + 1, F, mb)] + slack
            assert end[Action(s + 1, B, mb)] <= start[Action(s, B, mb)] + slack
    bubbles = tl.bubbles()
    assert len(bubbles) == P and all(0.0 <= b < 1.0 for b in bubbles)
    assert 0.0 < tl.step_time < 5.0
    ranks = tl.meta["ranks"]
    assert len(ranks) == P and all(r["peak_activation_bytes"] > 0 for r in ranks)
    assert tl.stage_costs()["F"][0] > 0
