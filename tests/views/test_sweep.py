"""A measured M sweep (the demo's folder format) as page data and through the CLI.

The fixture in tests/views/data/sweep was recorded on real processes by
tests/views/record_sweep.py (P = 4, gpipe, emulated device time)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conveyor.cli.main import main
from conveyor.errors import TimelineError
from conveyor.sim import load_timeline
from conveyor.views.measured import cpu_note
from conveyor.views.page import page_data
from conveyor.views.sweep import sweep_section

from tests.views.helpers import measured_like

SWEEP = Path(__file__).parent / "data" / "sweep"
SMALL = ["--max-P", "4", "--max-M", "16", "--no-cache", "--jobs", "1"]


def test_section_has_one_checked_run_per_m():
    sw = sweep_section(SWEEP)
    assert (sw["P"], sw["schedule"], [r["M"] for r in sw["runs"]]) == (4, "gpipe",
                                                                     [1, 2, 4, 8, 16])
    for run in sw["runs"]:
        tl = load_timeline(SWEEP / run["file"])
        assert run["M"] == tl.M and run["measured"]["T"] == tl.step_time
        kinds = {e[1].rstrip("0123456789").lstrip("0123456789") for e in run["measured"]["events"]}
        assert {"F", "B", "SEND_F", "RECV_F"} <= kinds     # communication comes along
        assert run["note"] is None                          # emulated devices: no shared-core note
    # the same folder through its sweep.json
    assert sweep_section(SWEEP / "sweep.json")["rows"] == sw["rows"]


def test_measured_bubble_shrinks_with_m():
    bubbles = [r["measured"]["bubble"] for r in sweep_section(SWEEP)["runs"]]
    assert bubbles == sorted(bubbles, reverse=True) and bubbles[0] > 0.7 > 0.3 > bubbles[-1]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "sweep.json").unlink(), "sweep.json is missing"),
    (lambda d: (d / "sweep.json").write_text("{"), "cannot read it"),
    (lambda d: (d / "sweep.json").write_text('{"rows": []}'), 'no "rows" list'),
    (lambda d: (d / "M04.json").unlink(), "row M=4 names 'M04.json', which does not exist"),
    (lambda d: shutil.copy(d / "M02.json", d / "M04.json"), "recorded with M=2 but M=4"),
])
def test_a_broken_sweep_says_what_is_wrong(tmp_path, damage, message):
    d = tmp_path / "sweep"
    shutil.copytree(SWEEP, d)
    damage(d)
    with pytest.raises(TimelineError, match=message.replace("(", r"\(")):
        sweep_section(d)


def test_viz_writes_the_sweep_and_opens_it(tmp_path, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    out = tmp_path / "page.html"
    assert main(["viz", "--timeline", str(SWEEP), "-o", str(out), "--open", *SMALL]) == 0
    data = page_data(out.read_text())
    assert [r["M"] for r in data["sweep"]["runs"]] == [1, 2, 4, 8, 16]
    assert data["measured"] is None
    assert data["initial"]["M"] == 16 and data["initial"]["view"] == "step"
    assert opened == [out.resolve().as_uri()]


def test_viz_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["viz", "--timeline", str(tmp_path), "-o", str(tmp_path / "p.html"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "is not a measured sweep: sweep.json is missing" in err and "Traceback" not in err


def test_cpu_note_only_where_ranks_outnumber_cores():
    tl = measured_like("gpipe", 4, 8)
    assert cpu_note(tl, cores=2).startswith("4 processes share 2 CPU cores")
    assert "1 - 2/4 = 50%" in cpu_note(tl, cores=2)
    assert cpu_note(tl, cores=4) is None
    tl.meta["device_time"] = {"forward": 0.01}
    assert cpu_note(tl, cores=2) is None
