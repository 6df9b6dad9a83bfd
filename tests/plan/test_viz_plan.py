"""``conveyor viz --plan``: the plan drawn with the planner's own costs."""

from __future__ import annotations

import json

import pytest

from conveyor.cli.main import main
from conveyor.errors import PlanError
from conveyor.plan import load_plan, plan_to_dict, save_plan, search
from conveyor.plan.messages import fmt_time
from conveyor.sim import simulate
from tests.plan._profiles import UNEQUAL, synthetic


@pytest.fixture
def planned(tmp_path):
    prof = synthetic(UNEQUAL)
    best = search(prof, P=4, batch_size=62, memory=None).best
    path = save_plan(plan_to_dict(best, prof, batch_size=62, budget=None), tmp_path / "plan.json")
    return best, path


def test_the_plan_keeps_the_costs_it_was_predicted_with(planned):
    best, path = planned
    plan = load_plan(path)
    tl = simulate(plan.schedule, plan.cost_model(), check=False, unit="s")
    assert tl.step_time == pytest.approx(best.step, rel=1e-12)
    assert tl.bubble_overall == pytest.approx(best.bubble, rel=1e-12)
    # 62 samples over M: sizes differ by one, each priced at its own size
    assert len(set(best.sizes)) == 2
    old = json.loads(path.read_text())
    del old["costs"]
    with pytest.raises(PlanError, match="holds no costs"):
        load_plan(old).cost_model()


def test_viz_plan_draws_the_planners_prediction(planned, tmp_path, capsys, monkeypatch):
    best, path = planned
    monkeypatch.chdir(tmp_path)
    assert main(["viz", "--plan", str(path), "-o", "plan.svg"]) == 0
    out = capsys.readouterr().out
    title = out.splitlines()[0]
    assert f"plan: {best.name}, P=4, M={best.M}" in title
    assert f"layers per stage {','.join(map(str, best.balance))}" in title
    assert f"predicted step {fmt_time(best.step)}" in title
    assert f"bubble {100 * best.bubble:.1f}%" in title
    assert "peak memory per rank: " in out and "(no budget)" in out
    svg = (tmp_path / "plan.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
