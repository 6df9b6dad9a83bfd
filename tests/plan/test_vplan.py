"""The planner trades memory for time: the V schedules of controllable memory,
the budgeted family and optimizer sharding are candidates, and the memory
model counts parameters, gradients, optimizer state and activations."""

import pytest

from conveyor.errors import PlanError
from conveyor.plan import search, stage_costs
from conveyor.plan.candidates import budget_options
from conveyor.plan.report import plan_table
from conveyor.schedule.vshape import budget_range
from tests.plan._profiles import synthetic

P, BATCH, M = 4, 32, [8]


def _least(prof, name, **kw):
    """The fastest plan of one schedule, with no budget, and its fullest rank."""
    r = search(prof, P=P, batch_size=BATCH, schedules=[name], microbatches=M, refine=False, **kw)
    return max(r.peaks(r.best))


def test_a_budget_that_rules_out_1f1b_gets_a_v_schedule_not_a_refusal():
    prof = synthetic([1] * 8, act=1e5, params=0)  # activations are all the memory
    one, vmin = _least(prof, "1f1b"), _least(prof, "v-min")
    assert vmin < 0.9 * one  # 6.0 MB against 7.2 MB on the fullest rank
    budget = (one + vmin) / 2
    res = search(prof, P=P, batch_size=BATCH, memory=budget, microbatches=M, refine=False)
    best = res.best
    assert best.name in ("v-min", "v-half", "v-budget") and best.fits, best.label
    assert max(best.peak_bytes) <= budget
    # 1F1B without recomputing does not fit; recomputing, it is slower
    for c in res.candidates:
        if c.name == "1f1b":
            peaks = res.peaks(c)
            assert max(peaks) > budget or any(c.checkpoint)
    text = plan_table(res, top=20)
    assert "of budget" in text and "v-min" in text
    # every row shows its bytes against the budget, 1F1B's over it
    row = next(line for line in text.splitlines() if line.split()[1:2] == ["1f1b"])
    assert any(w.endswith("%") and w[:-1].isdigit() and int(w[:-1]) > 100
               for w in row.split()), row


def test_the_budgeted_family_is_searched_between_v_min_and_zbv():
    low, high = budget_range(P)
    opts = budget_options("v-budget", P)
    assert opts and all(low < o["budget"] < high for o in opts)
    assert budget_options("1f1b", P) == [{}]
    prof = synthetic([1] * 8, act=1e5, params=0)
    res = search(prof, P=P, batch_size=BATCH, microbatches=M, refine=False, schedules=["v-budget"])
    assert {c.options["budget"] for c in res.candidates} == {o["budget"] for o in opts}
    assert res.best.schedule.meta["budget"] == res.best.options["budget"]


def test_memory_counts_parameters_gradients_optimizer_state_and_sharding():
    prof = synthetic([1] * 8, act=1.0, params=1000)  # Adam: 2000 bytes of state per layer
    plain = stage_costs(prof, [2] * 4, [4] * 8, [False] * 4)
    shard = stage_costs(prof, [2] * 4, [4] * 8, [False] * 4, shard=2)
    assert plain.static_bytes == (2 * 1000 + 2 * 1000 + 2 * 2000,) * 4
    assert shard.static_bytes == (2 * 1000 + 2 * 1000 + 2 * 2000 / 2,) * 4
    assert plain.param_bytes == (2000,) * 4 and shard.optim_bytes == (2000.0,) * 4


def test_sharding_is_chosen_when_dp_allows_and_the_state_does_not_fit_otherwise():
    prof = synthetic([1] * 8, act=10.0, params=1_000_000)
    base = _least(prof, "1f1b", cluster={"dp": 2})
    # unsharded 1F1B needs 2 layers x (1 + 1 + 2) MB plus activations; sharded 3 MB less
    budget = base - 1.5e6
    res = search(prof, P=P, batch_size=BATCH, memory=budget, microbatches=M, refine=False,
                 schedules=["1f1b"], cluster={"dp": 2})
    assert res.best.shard and not any(res.best.checkpoint)
    assert max(res.best.peak_bytes) == pytest.approx(base - 2 * 1_000_000)
    assert "optimizer state 1.91 MiB (sharded)" in plan_table(res)
    # without data parallelism there is nothing to shard: over budget
    with pytest.raises(PlanError, match="no plan fits"):
        search(prof, P=P, batch_size=BATCH, memory=budget, microbatches=M, refine=False,
               schedules=["1f1b"])


def test_a_budget_below_every_candidate_names_the_leanest_and_its_bytes():
    prof = synthetic([1] * 8, act=1e5, params=0)
    with pytest.raises(PlanError) as e:
        search(prof, P=P, batch_size=BATCH, memory=1e5, microbatches=M, refine=False)
    text = str(e.value)
    assert "no plan fits 97.66 KiB per rank on P=4: the leanest, " in text
    assert "needs " in text and "What would fit: --memory" in text


def test_chunked_plans_try_even_cuts_beside_the_least_rank_total():
    """On 16 equal layers the least largest rank total pairs 3- and 1-layer
    chunks ([3, 3, 3, 3, 1, 1, 1, 1]); V-Min's order runs that 8 % slower
    than the seed's even cut, which the planner now also simulates."""
    from conveyor.partition import placed_partition
    from conveyor.plan.candidates import microbatch_sizes
    from conveyor.plan.search import _Searcher
    from conveyor.schedule import build_schedule
    from conveyor.sim import simulate

    prof = synthetic([1] * 16, act=1e3, params=0)
    res = search(prof, P=P, batch_size=BATCH, schedules=["v-min"], microbatches=M, refine=False)
    sched = build_schedule("v-min", P, 8)
    times = _Searcher(prof, P, BATCH, None, False).layer_times(4, False)
    lopsided = placed_partition(times, sched.placement)[0]
    assert max(lopsided) - min(lopsided) >= 2
    slow = simulate(sched, stage_costs(prof, lopsided, microbatch_sizes(BATCH, 8), [False] * 8,
                                       sched.placement).cost_model(), unit="s").step_time
    assert res.best.balance == [2] * 8
    assert res.best.step < 0.95 * slow
