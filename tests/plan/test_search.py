"""The planner's search, its errors and its files, on synthetic profiles."""

from __future__ import annotations

import json

import pytest

from conveyor.errors import PlanError
from conveyor.partition import balanced_partition, bottleneck, uniform_balance
from conveyor.plan import (
    Profile, load_plan, load_profile, plan_to_dict, rank_memory, search, stage_costs,
)
from conveyor.plan.search import default_microbatches, microbatch_sizes
from conveyor.schedule import build_schedule, load_schedule
from conveyor.sim import simulate
from tests.plan._profiles import UNEQUAL, synthetic


def test_best_plan_beats_the_seed_split_in_the_simulator():
    prof = synthetic(UNEQUAL)
    result = search(prof, P=4, batch_size=64)
    best = result.best
    # the seed: equal layer counts, 1F1B, M = 8
    sched = build_schedule("1f1b", 4, 8)
    seed = stage_costs(prof, uniform_balance(prof.L, 4), microbatch_sizes(64, 8), [False] * 4)
    seed_step = simulate(sched, seed.cost_model(), check=False).step_time
    assert best.step < seed_step / 1.3
    # its split's bottleneck is the solver's optimum; layer 0's input needs no
    # gradient, so it costs F + W (2 units per unit), the others F + B (3)
    times = [2 * UNEQUAL[0]] + [3 * u for u in UNEQUAL[1:]]
    assert bottleneck(times, best.balance) == bottleneck(times, balanced_partition(times, 4))
    assert result.candidates[0] is best and best.note == "best"
    assert all(c.step >= best.step for c in result.candidates if c.fits)


def test_memory_budget_rules_out_gpipe_and_says_by_how_much():
    prof = synthetic([1] * 8)
    free = search(prof, P=2, batch_size=64, schedules=["gpipe", "1f1b"], microbatches=[16])
    gp = next(c for c in free.candidates if c.name == "gpipe")
    fb = next(c for c in free.candidates if c.name == "1f1b")
    # without a budget, peaks are replayed on demand (the best's always)
    assert free.best.peak_bytes and not (gp.peak_bytes and fb.peak_bytes)
    assert max(free.peaks(gp)) > max(free.peaks(fb))
    budget = (max(gp.peak_bytes) + max(fb.peak_bytes)) / 2
    tight = search(prof, P=2, batch_size=64, memory=budget, schedules=["gpipe", "1f1b"],
                   microbatches=[16])
    assert tight.best.name == "1f1b" and max(tight.best.peak_bytes) <= budget
    # GPipe holds all 16 micro-batches: it fits only by recomputing, and loses
    loser = next(c for c in tight.candidates if c.name == "gpipe")
    assert not loser.fits or any(loser.checkpoint)
    assert loser.step > tight.best.step and "%" in loser.note


def test_checkpointing_is_chosen_when_nothing_else_fits_and_costs_a_forward():
    prof = synthetic([1] * 8, act=100_000)
    free = search(prof, P=2, batch_size=32, schedules=["1f1b"], microbatches=[4], refine=False)
    need = max(free.best.peak_bytes)
    tight = search(prof, P=2, batch_size=32, memory=need * 0.75, schedules=["1f1b"],
                   microbatches=[4], refine=False)
    assert any(tight.best.checkpoint)
    assert tight.best.step > free.best.step  # the recomputed forward is charged
    assert max(tight.best.peak_bytes) <= need * 0.75


def test_recompute_is_charged_to_the_backward():
    prof = synthetic([1, 1])
    sched = build_schedule("gpipe", 1, 1)
    plain = simulate(sched, stage_costs(prof, [2], [10], [False]).cost_model())
    ckpt = simulate(sched, stage_costs(prof, [2], [10], [True]).cost_model())
    # forward 2 layers x 10 samples x 1 ms = 20 ms, recomputed once more
    assert ckpt.step_time - plain.step_time == pytest.approx(0.020)


def test_uneven_microbatches_cost_by_their_size():
    prof = synthetic([1, 1])
    sc = stage_costs(prof, [1, 1], microbatch_sizes(10, 4), [False, False])
    assert sc.sizes == (3, 3, 2, 2)
    assert sc.forward[0] == pytest.approx((0.003, 0.003, 0.002, 0.002))
    tl = simulate(build_schedule("gpipe", 2, 4), sc.cost_model())
    assert tl.events[0].duration in (pytest.approx(0.003), pytest.approx(0.002))
    assert 6 in default_microbatches(4, 64) and 64 % 6  # uneven M is searched


def test_rank_memory_walks_the_order():
    prof = synthetic([1] * 4, act=1.0, params=0)
    sched = build_schedule("1f1b", 2, 4)
    mem = rank_memory(sched, stage_costs(prof, [2, 2], [1] * 4, [False] * 2), static=False)
    # stage 0 keeps 2 micro-batches (P - s) of input + 2 saved layers + output: 4 bytes
    # each, and the gradient receives of both, posted before the first one's B
    assert mem[0] == 2 * 4 + 2 * 1
    # the last stage's output becomes the loss: input + 2 saved layers; besides, the
    # next input's receive is posted ahead and the last input gradient sent is not
    # yet proven delivered
    assert mem[1] == 1 * 3 + 1 + 1


def test_budget_below_one_layer():
    # 1000 bytes of parameters, as many of gradients, 2000 of Adam's state per layer
    prof = synthetic([1, 1, 1], params=1000)
    with pytest.raises(PlanError, match=r"memory budget 2.00 KiB is below what layer 0 "
                                        r"\(Block\) alone needs: 3.91 KiB of parameters, "
                                        r"gradients and optimizer state"):
        search(prof, P=2, batch_size=8, memory=2048)


def test_batch_smaller_than_m():
    with pytest.raises(PlanError, match="batch 4 is smaller than M=8: .* use M <= 4"):
        search(synthetic([1] * 4), P=2, batch_size=4, microbatches=[2, 8])


def test_no_plan_fits_names_the_shortfall_and_what_fits():
    prof = synthetic([1] * 4, act=1e6)
    with pytest.raises(PlanError) as e:
        search(prof, P=2, batch_size=64, memory=4e6, schedules=["1f1b"], microbatches=[4])
    text = str(e.value)
    assert "no plan fits 3.81 MiB per rank on P=2" in text
    assert "over. What would fit: --memory" in text


def test_plan_file_is_a_schedule_file_and_checks_the_model(tmp_path):
    prof = synthetic(UNEQUAL, name="unequal")
    best = search(prof, P=4, batch_size=64, schedules=["1f1b"]).best
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_to_dict(best, prof, batch_size=64, budget=None)))
    sched = load_schedule(path)  # what `conveyor simulate --file` / `viz --file` read
    assert sched.M == best.M and sched.P == 4
    plan = load_plan(path)
    assert plan.balance == best.balance and plan.predicted["step_s"] == best.step
    plan.check_model(prof.L, "unequal")
    with pytest.raises(PlanError, match="the plan .* is for another model: 'unequal' with 14 "
                                        "layers"):
        plan.check_model(9, "abc")


def test_profile_round_trip_and_bad_files(tmp_path):
    prof = synthetic([1, 2])
    path = prof.save(tmp_path / "p.json")
    again = load_profile(path)
    assert again.layers == prof.layers and again.model == prof.model
    (tmp_path / "bad.json").write_text(json.dumps({"format": "conveyor.timeline/1"}))
    with pytest.raises(PlanError, match="is not a conveyor profile"):
        load_profile(tmp_path / "bad.json")
    d = prof.to_dict()
    d["model"]["layers"] = 3
    with pytest.raises(PlanError, match="model has 3 layers but the profile lists 2"):
        Profile.from_dict(d)


def test_affine_fit_recovers_fixed_and_per_sample_time():
    from conveyor.plan import Affine

    got = Affine.fit([(16, 0.001 + 16 * 0.002), (8, 0.001 + 8 * 0.002), (4, 0.001 + 4 * 0.002)])
    assert got.fixed == pytest.approx(0.001) and got.per_sample == pytest.approx(0.002)
    # noise that would make the fixed part negative: the line goes through 0
    assert Affine.fit([(8, 0.016), (4, 0.0075)]).fixed == 0.0


@pytest.mark.parametrize("name, M", [("gpipe", 4), ("1f1b", 8), ("1f1b", 3), ("naive", 1)])
def test_the_bound_never_exceeds_the_simulated_step(name, M):
    """The search skips candidates by a lower bound: it must be one."""
    prof = synthetic(UNEQUAL, fixed=1e-3)
    res = search(prof, P=4, batch_size=24, schedules=[name], microbatches=[M], refine=False)
    c = res.best
    assert c.bound <= c.step * (1 + 1e-12)
    assert c.bound >= 0.5 * c.step  # and not a trivial one


def test_plan_cli_warns_of_cpu_spread_only_for_several_stages_per_rank():
    from conveyor.cli.plan import cpu_caveat

    over_gloo = cpu_caveat("cpu", 2)
    assert "over gloo, plans with 2 stages per rank measured up to 13.1 %" in over_gloo
    assert "--transport shm" in over_gloo
    assert "over shared memory, plans with 2 stages" in cpu_caveat("cpu", 2, "shm")
    assert cpu_caveat("cpu", 1) is None and cpu_caveat("cpu", 1, "shm") is None
    assert cpu_caveat("cuda:0", 2) is None
