"""The view commands end to end: files written, bad input refused with one
line and exit code 2, and no partial output left behind."""

import json
import os
import subprocess
import sys

import pytest

from conveyor.cli.main import main
from conveyor.views.page import page_data

from tests.views.conftest import REPO
from tests.views.helpers import measured_like

SMALL = ["--max-P", "4", "--max-M", "8", "--jobs", "1"]


@pytest.fixture
def run_json(tmp_path):
    path = tmp_path / "run.json"
    measured_like("gpipe", 4, 8).save(path)
    return path


def _bad(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _broken(tmp_path, run_json):
    d = json.loads(run_json.read_text())
    return {
        "broken JSON": (_bad(tmp_path, "broken.json", '{"P": 4, "events": [[0, "0F0", 0'),
                        "is not valid JSON"),
        "missing fields": (_bad(tmp_path, "fields.json", json.dumps({"P": 4, "events": []})),
                           "missing field(s) M, S, schedule"),
        "P mismatch": (_bad(tmp_path, "p8.json", json.dumps(dict(d, P=8))),
                       "has S=4 stages but schedule 'gpipe' with P=8, M=8 has 8"),
        "P too small": (_bad(tmp_path, "p2.json", json.dumps(dict(d, P=2))),
                        "names rank 2 but P=2"),
    }


@pytest.mark.parametrize("case", ["broken JSON", "missing fields", "P mismatch", "P too small"])
def test_viz_refuses_what_is_not_a_timeline(case, tmp_path, run_json, capsys):
    path, message = _broken(tmp_path, run_json)[case]
    out = tmp_path / "page.html"
    before = set(os.listdir(tmp_path))
    assert main(["viz", "--timeline", str(path), "-o", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("conveyor: error: ") and err.count("\n") == 1
    assert not out.exists() and set(os.listdir(tmp_path)) == before   # no partial page


def test_viz_refuses_a_p_other_than_the_runs(tmp_path, run_json, capsys):
    out = tmp_path / "page.html"
    assert main(["viz", "--timeline", str(run_json), "-P", "8", "-o", str(out), *SMALL]) == 2
    assert "recorded with P=4 but P=8 was requested" in capsys.readouterr().err
    assert not out.exists()


def test_viz_with_a_measured_run(tmp_path, run_json):
    out = tmp_path / "page.html"
    assert main(["viz", "--timeline", str(run_json), "-o", str(out), *SMALL]) == 0
    html = out.read_text()
    data = page_data(html)
    assert data["measured"]["file"] == "run.json"
    assert data["initial"] == {"schedule": "gpipe", "P": 4, "M": 8, "view": "step", "ratio": 2.0}
    assert len(data["measured"]["measured"]["events"]) == 64
    assert [len(row) for row in data["schedules"][0]["configs"]] == [8] * 4


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0"], "argument --ratio: '0' must be a finite number > 0"),
    (["--ratios", "1,x"], "--ratios '1,x' is not a list of numbers"),
    (["-P", "9"], "-P 9 is outside the page's 1..4"),
    (["--schedule", "gpipes"], "did you mean 'gpipe'?"),
    (["-o", "/no/such/dir/page.html"], "folder '/no/such/dir' does not exist"),
])
def test_viz_bad_options(argv, message, tmp_path, capsys):
    argv = ["viz", *SMALL, *argv] if "-o" in argv else ["viz", "-o", str(tmp_path / "p.html"),
                                                         *SMALL, *argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.html").exists()


def test_plot_and_trace_commands(tmp_path, run_json, capsys):
    g, s, b, t = (tmp_path / n for n in ("g.png", "g.svg", "b.png", "t.json"))
    assert main(["plot", "gantt", "--timeline", str(run_json), "--compare",
                 "-o", str(g), "-o", str(s)]) == 0
    assert main(["plot", "bubble", "--timeline", str(run_json), "--max-M", "16",
                 "-o", str(b)]) == 0
    assert main(["trace", "--schedule", "1f1b", "-P", "3", "-M", "5", "-o", str(t)]) == 0
    assert g.read_bytes()[:4] == b"\x89PNG" and s.read_text().lstrip().startswith("<?xml")
    assert b.stat().st_size > 1000
    names = [e["name"] for e in json.loads(t.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(names) == 30 and "2B4" in names
    assert main(["plot", "gantt", "-o", str(tmp_path / "g.gif")]) == 2
    assert "end the name with .png or .svg" in capsys.readouterr().err
    assert main(["plot", "bubble", "--schedule", "1f1b", "--timeline", str(run_json),
                 "-o", str(tmp_path / "x.png")]) == 2
    assert "schedule='gpipe' but schedule='1f1b'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_exit_code_through_the_real_entry_point(tmp_path):
    bad = _bad(tmp_path, "bad.json", "not json")
    out = tmp_path / "page.html"
    run = subprocess.run([sys.executable, "-m", "conveyor", "viz", "--timeline", str(bad),
                          "-o", str(out)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 2
    assert run.stderr.startswith("conveyor: error: ") and "is not valid JSON" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not out.exists()


def test_viz_with_several_steps_of_one_run(tmp_path, capsys):
    from tests.views.helpers import slowed_steps
    paths = []
    for k, tl in enumerate(slowed_steps("1f1b", 4, 8, steps=3, slow_rank=3)):
        paths += ["--timeline", str(tl.save(tmp_path / f"step{k}.json"))]
    out = tmp_path / "page.html"
    assert main(["viz", *paths, "-o", str(out), *SMALL]) == 0
    data = page_data(out.read_text())
    assert data["steps"]["straggler"]["rank"] == 3 and len(data["steps"]["runs"]) == 3
    assert data["measured"] is None and data["initial"]["schedule"] == "1f1b"
    other = tmp_path / "other.json"
    measured_like("gpipe", 4, 8).save(other)
    assert main(["viz", *paths, "--timeline", str(other), "-o", str(tmp_path / "x.html"),
                 *SMALL]) == 2
    assert "pass steps of one run" in capsys.readouterr().err


def test_viz_prints_its_progress_per_schedule(tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["viz", "-o", str(out), "--no-cache", *SMALL]) == 0
    from conveyor.schedule import schedule_names
    from conveyor.views.data import PAGE_SOLVED
    n = len([x for x in schedule_names() if x not in PAGE_SOLVED]) + 1  # and decode
    err = capsys.readouterr().err
    assert "building the page's data" in err
    assert f"[1/{n}] naive" in err and f"[{n}/{n}] " in err
