"""``conveyor plan`` writes a plan only where -o says, and -o replaces an
earlier plan but never a profile or any other file."""

from __future__ import annotations

import json

from conveyor.cli.main import main
from tests.plan._profiles import synthetic

ARGS = ["-P", "2", "--batch-size", "8", "-s", "1f1b", "-M", "4"]


def test_without_o_nothing_is_written(tmp_path, monkeypatch, capsys):
    synthetic([1, 2, 1, 1]).save(tmp_path / "prof.json")
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--profile", "prof.json", *ARGS]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof.json"]
    assert out.splitlines()[-1].startswith("not written: add -o plan.json to save it")


def test_o_replaces_a_plan_and_refuses_a_profile(tmp_path, capsys):
    prof = tmp_path / "prof.json"
    synthetic([1, 2, 1, 1]).save(prof)
    before = prof.read_bytes()
    assert main(["plan", "--profile", str(prof), *ARGS, "-o", str(prof)]) == 2
    err = capsys.readouterr().err
    assert err == (f"conveyor: error: -o {str(prof)!r} exists and holds a conveyor.profile/1 "
                   f"file, not a conveyor plan; -o replaces only an earlier plan: choose "
                   f"another file name\n")
    assert prof.read_bytes() == before  # refused before the search, nothing touched

    other = tmp_path / "notes.txt"
    other.write_text("my notes")
    assert main(["plan", "--profile", str(prof), *ARGS, "-o", str(other)]) == 2
    assert "holds something other than a plan" in capsys.readouterr().err
    assert other.read_text() == "my notes"

    plan = tmp_path / "plan.json"
    assert main(["plan", "--profile", str(prof), *ARGS, "-o", str(plan)]) == 0
    assert json.loads(plan.read_text())["M"] == 4
    assert main(["plan", "--profile", str(prof), "-P", "2", "--batch-size", "8", "-s",
                 "gpipe", "-M", "2", "-o", str(plan)]) == 0  # an earlier plan is replaced
    assert (json.loads(plan.read_text())["name"], json.loads(plan.read_text())["M"]) == \
        ("gpipe", 2)
    assert "plan written to" in capsys.readouterr().out
