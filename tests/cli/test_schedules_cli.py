"""``conveyor schedules`` and ``conveyor simulate -s NAME`` for every schedule."""

import json

import pytest

from conveyor.cli.main import main
from conveyor.schedule import get_spec, schedule_names


def test_schedules_lists_every_one_with_formula_and_memory(capsys):
    assert main(["schedules"]) == 0
    out = capsys.readouterr().out
    for name in schedule_names():
        spec = get_spec(name)
        assert f"\n{name} " in "\n" + out
        assert f"memory  {spec.memory_text} per rank" in out
        if spec.bubble_formula:
            assert f"bubble  {spec.bubble_formula}  ({spec.scope}" in out
    assert "(P-1)(F+I-2W)  (steady state, M >= 2P-1" in out


def test_schedules_json_is_the_registry(capsys):
    assert main(["schedules", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in facts] == schedule_names()
    assert {d["name"]: d["options"] for d in facts}["interleaved-1f1b"] == {"v": 2}


@pytest.mark.parametrize("name", schedule_names())
def test_simulate_each_schedule(name, capsys):
    assert main(["simulate", "-s", name, "-P", "4", "-M", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedule"] == name and out["M"] == (1 if name == "naive" else 6)
    assert out["metrics"]["step_time"] > 0


def test_chunks_flag_changes_the_interleaving(capsys):
    steps = {}
    for v in (2, 4):
        assert main(["simulate", "-s", "interleaved-1f1b", "-P", "4", "-M", "8", "-v", str(v),
                     "--forward", "0.5", "--backward", "1", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["S"] == 4 * v
        steps[v] = out["metrics"]["step_time"]
    # chunk costs 1/v of F=1, B=2 when halved again: v=4 chunks cost half of v=2's
    assert steps[2] == 8 * 2 * 1.5 + 3 * 1.5  # M v (f+b) + (P-1)(f+b), f+b = 1.5


def test_options_the_schedule_does_not_take_fail_in_one_line(capsys):
    assert main(["simulate", "-s", "zb-h1", "-v", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "takes no --chunks" in err and "interleaved-1f1b" in err


def test_zb_auto_plans_for_the_simulated_costs(capsys):
    args = ["-P", "4", "-M", "8", "--forward", "1,1,1,1.5", "--latency", "0.5", "--json"]
    assert main(["simulate", "-s", "zb-auto", "--cap", "4", *args]) == 0
    auto = json.loads(capsys.readouterr().out)["metrics"]
    assert max(auto["peak_activations"]) <= 4
    for fixed in ("1f1b", "zb-h1"):
        assert main(["simulate", "-s", fixed, *args]) == 0
        assert auto["step_time"] <= json.loads(capsys.readouterr().out)["metrics"]["step_time"]
