"""balance="time" | "memory" from a profile, and a profile from another model."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.errors import PipelineError, PlanError
from conveyor.partition import bottleneck, rank_loads
from conveyor.plan import Affine
from conveyor.runtime.train.planned import from_plan, named_balance
from conveyor.measure.profile import profile
from tests.runtime import _models


@pytest.fixture(scope="module")
def prof():
    return profile(_models.mlp(3), _models.batch(8)[0], repeats=1, warmup=1, progress=False)


def test_time_balance_isolates_a_slow_layer(prof):
    # make layer 0 as slow as all others together: it gets a stage of its own
    layers = list(prof.layers)
    rest = sum(x.forward.at(8) + x.backward.at(8) for x in layers[1:])
    layers[0] = dataclasses.replace(layers[0], forward=Affine(rest, 0.0), backward=Affine())
    slow = dataclasses.replace(prof, layers=layers)
    bal = named_balance("time", _models.mlp(3), 2, slow)
    assert bal == [1, 6]
    times = [x.forward.at(8) + x.backward.at(8) for x in layers]
    assert bottleneck(times, bal) == pytest.approx(rest)


def test_memory_balance_minimises_the_fullest_stage(prof):
    bal = named_balance("memory", _models.mlp(3), 2, prof)
    costs = [x.static_bytes + x.saved_bytes * 8 for x in prof.layers]
    best = min(bottleneck(costs, [k, 7 - k]) for k in range(1, 7))
    assert bottleneck(costs, bal) == best


def test_time_balance_of_chunked_placements_minimises_rank_totals(prof):
    # a V on 2 ranks: stages 0 and 3 on rank 0, 1 and 2 on rank 1
    placement = [0, 1, 1, 0]
    bal = named_balance("time", _models.mlp(3), 4, prof, placement=placement)
    times = [prof.layers[0].forward.at(8) + prof.layers[0].weight_grad.at(8)] + [
        x.forward.at(8) + x.backward.at(8) for x in prof.layers[1:]]
    best = min(max(rank_loads(times, b, placement)) for b in _splits(7, 4))
    assert max(rank_loads(times, bal, placement)) == pytest.approx(best, rel=1e-12)
    with pytest.raises(PipelineError, match="has 3 entries for 4 stages"):
        named_balance("time", _models.mlp(3), 4, prof, placement=[0, 1, 0])


def _splits(L: int, S: int):
    import itertools

    for cuts in itertools.combinations(range(1, L), S - 1):
        ends = (0,) + cuts + (L,)
        yield [ends[i + 1] - ends[i] for i in range(S)]


def test_counts_pass_through_and_names_need_a_profile(prof):
    assert named_balance([3, 4], _models.mlp(3), 2) == [3, 4]
    with pytest.raises(PipelineError, match="needs per-layer costs: pass profile="):
        named_balance("time", _models.mlp(3), 2)


def test_profile_from_another_model(prof):
    with pytest.raises(PlanError, match="the profile is of another model: .* with 7 layers"):
        named_balance("time", _models.mlp(4), 2, prof)
    plan = {"format": "conveyor.plan/1", "name": "1f1b", "P": 2, "M": 2, "placement": [0, 1],
            "actions": [["0F0", "0F1", "0B0", "0B1"], ["1F0", "1B0", "1F1", "1B1"]],
            "model": prof.model, "batch": 8, "balance": [3, 4], "checkpoint": [False, False]}
    assert from_plan(plan, _models.mlp(3))[1] == [3, 4]
    with pytest.raises(PlanError, match="is for another model"):
        from_plan(plan, _models.mlp(4))
