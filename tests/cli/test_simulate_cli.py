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
    (["-P", "0"], "-P/--ranks: the value must be a positive integer, got 0"),
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


def test_dp_report_and_chart(capsys):
    # 1F1B P=2 M=2 F=1 B=2; dp=2 on 2 nodes (one replica each), 100 bytes per
    # stage at 10 bytes/slot between nodes: each all-reduce takes 10 slots;
    # stage 1's runs 7-17, stage 0's 9-19, so the step is 19 and 10 slots are
    # exposed past the pipeline's 9.
    assert main(["simulate", "-P", "2", "-M", "2", "--dp", "2", "--nodes", "2",
                 "--param-bytes", "100", "--inter-bandwidth", "10", "--color", "never",
                 "--width", "200"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("stage")]
    assert rows == ["stage 0 │ 0 1 · ·=0== ·=1==" + "##" * 10,
                    "stage 1 │ · 0=0== 1=1==" + "##" * 10 + " · ·"]
    assert "data parallel       dp=2 replicas x P=2 ranks on 2 nodes" in out
    assert "all-reduce          10 slots on rank 0 (the longest), ring over 2 replicas " \
           "across nodes" in out
    assert "  exposed           10 slots: the step ends that long after the pipeline (9 " \
           "slots)" in out
    assert "  hidden by overlap 0 slots" in out
    assert "step time           19 slots" in out


def test_dp_flags_reach_the_timeline(capsys):
    assert main(["simulate", "-P", "4", "-M", "4", "-s", "interleaved-1f1b", "--dp", "4",
                 "--nodes", "2", "--param-bytes", "400", "--bandwidth", "100",
                 "--inter-bandwidth", "40", "--inter-latency", "0.5", "--no-overlap",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    costs = data["timeline"]["meta"]["costs"]
    assert (costs["dp"], costs["ranks_per_node"], costs["inter_bandwidth"],
            costs["allreduce_overlap"]) == (4, 8, 40.0, False)
    # dp groups {r, 4+r, 8+r, 12+r} span both nodes: 1.5 x 400 / 40 + 6 x 0.5 = 18.
    spans = {round(c[3] - c[2], 9) for c in data["timeline"]["collectives"]}
    assert spans == {18.0}


def test_decode_row_chart_and_table(capsys):
    assert main(["simulate", "--decode", "-P", "3", "-M", "1", "--new-tokens", "2",
                 "--color", "never", "--width", "200"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("stage")]
    # One lane: a prefill round, then the token's round, one stage at a time.
    assert rows == ["stage 0 │ 0 · · 0 · ·", "stage 1 │ · 0 · · 0 ·", "stage 2 │ · · 0 · · 0"]
    assert "idle per rank       66.7%  66.7%  66.7%" in out
    table = out.split("idle\n", 1)[1].splitlines()
    assert table[0].split() == ["1", "0.333", "1.00", "66.7%"]
    assert [line.split()[0] for line in table] == ["1", "2", "3", "4", "6"]


def test_decode_json_and_refusals(capsys):
    assert main(["simulate", "--decode", "-P", "2", "-M", "2", "--new-tokens", "4",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["decode"]["M"] == 2 and got["metrics"]["tokens"] == 8
    assert got["metrics"]["idle_overall"] == pytest.approx(1 / 9)  # 1 - 16/(2*8 + 2)
    assert main(["simulate", "--decode", "-s", "gpipe"]) == 2
    assert "--decode simulates the decode schedule itself; drop --schedule" in \
        capsys.readouterr().err
    assert main(["simulate", "--new-tokens", "3"]) == 2
    assert "--new-tokens and --prefill-chunks go with --decode" in capsys.readouterr().err
