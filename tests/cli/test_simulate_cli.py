import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.cli.main import main
from conveyor.schedule import build_schedule, save_schedule

ROOT = Path(__file__).resolve().parents[2]


def conveyor(*args, **kw):
    """Run the real command line in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, env=env, timeout=120, **kw)


def test_seed_numbers_on_the_command_line():
    one = conveyor("simulate", "-P", "4", "-M", "1", "--schedule", "gpipe")
    assert one.returncode == 0, one.stderr
    assert "bubble (formula)    3/4 = 75.0%" in one.stdout
    assert "bubble (simulated)  75.0%" in one.stdout
    many = conveyor("simulate", "-P", "4", "-M", "32", "--schedule", "gpipe")
    assert "bubble (formula)    3/35 = 8.6%" in many.stdout
    assert "bubble (simulated)  8.6%" in many.stdout
    assert "peak activations    r0:32  r1:32  r2:32  r3:32" in many.stdout


def test_gantt_rows_are_stages_and_bubble_is_drawn(capsys):
    assert main(["simulate", "-P", "3", "-M", "2", "-s", "gpipe", "--color", "never",
                 "--forward", "1", "--backward", "1", "--width", "200"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("stage")]
    assert rows == [
        "stage 0 │ 0 1 · · · ·=0=1",
        "stage 1 │ · 0 1 · ·=0=1 ·",
        "stage 2 │ · · 0 1=0=1 · ·",
    ]


def test_colour_marks_bubble_faint(capsys):
    main(["simulate", "-P", "2", "-M", "2", "--color", "always"])
    out = capsys.readouterr().out
    assert "\033[2m" in out and "\033[30;48;5;" in out


def test_json_output(capsys):
    assert main(["simulate", "-P", "4", "-M", "8", "-s", "1f1b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"]["peak_activations"] == [4, 3, 2, 1]
    assert data["formula_bubble"] == pytest.approx(3 / 11)
    assert len(data["timeline"]["events"]) == 2 * 4 * 8


def test_simulates_a_schedule_file(tmp_path, capsys):
    path = save_schedule(build_schedule("1f1b", 3, 4), tmp_path / "mine.csv")
    assert main(["simulate", "--file", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["P"], data["M"]) == (3, 4)


def test_schedules_lists_each_with_its_facts():
    from conveyor.schedule import schedule_names
    out = conveyor("schedules")
    heads = [line.split()[0] for line in out.stdout.splitlines() if not line.startswith(" ")]
    assert heads == schedule_names()
    assert heads[:3] == ["naive", "gpipe", "1f1b"]


@pytest.mark.parametrize("args,needle", [
    (["-P", "0"], "-P/--stages: the value must be a positive integer, got 0"),
    (["-M", "0"], "-M/--microbatches: the value must be a positive integer, got 0"),
    (["-M", "two"], "'two' is not an integer"),
    (["--schedule", "zigzag"], "unknown schedule 'zigzag'"),
    (["--forward", "fast"], "'fast' is not a number"),
    (["--backward", "-2"], "costs must be finite numbers >= 0"),
    (["--forward", "1,2"], "2 values but the schedule has 4 stages"),
    (["--file", "/no/such/file.json"], "cannot read schedule file"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    proc = conveyor("simulate", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: error:"), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
