"""Every bad command line fails the same way: one line on stderr, exit code 2,
no traceback, a message that names the bad value, and no file left behind.

Each row is (argv, a word the message must contain). They run in-process
through ``conveyor.cli.main.main`` inside a scratch folder that holds a few
fixture files; whatever else is in the folder afterwards was left behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conveyor.cli.main import main
from conveyor.schedule import build_schedule, save_schedule

BIG = "1000000000"

CASES = [
    # -- simulate -----------------------------------------------------------------
    (["simulate", "-P", "0"], "must be a positive integer, got 0"),
    (["simulate", "-P", "-3"], "-3"),
    (["simulate", "-P", "x"], "'x'"),
    (["simulate", "-P", BIG], BIG),
    (["simulate", "-M", BIG], BIG),
    (["simulate", "-M", "0"], "must be a positive integer, got 0"),
    (["simulate", "-P", "1024", "-M", "1024"], "1048576"),
    (["simulate", "-s", "nope"], "nope"),
    (["simulate", "--file", "missing.json"], "missing.json"),
    (["simulate", "--file", "placement.json"], "'placement' is 5"),
    (["simulate", "--file", "ok.json", "-s", "gpipe"], "--schedule"),
    (["simulate", "--file", "ok.json", "-M", "4"], "-M"),
    (["simulate", "--file", "ok.json", "-P", "2"], "-P"),
    (["simulate", "--file", "broken.json"], "broken.json"),
    (["simulate", "--file", "empty.csv"], "empty"),
    (["simulate", "--file", "action.csv"], "0X0"),
    (["simulate", "--forward", "-1"], "-1"),
    (["simulate", "--forward", "nan"], "nan"),
    (["simulate", "--latency", "inf"], "inf"),
    (["simulate", "--forward", "1,2", "-P", "4"], "2"),
    (["simulate", "--width", "0"], "must be a positive integer, got 0"),
    (["simulate", "--color", "purple"], "purple"),
    (["simulate", "--bogus"], "--bogus"),
    (["simulate", "--dp", "0"], "must be a positive integer, got 0"),
    (["simulate", "--dp", BIG], BIG),
    (["simulate", "--nodes", "0"], "must be a positive integer, got 0"),
    (["simulate", "-P", "4", "--dp", "2", "--nodes", "3"], "--nodes 3 does not divide the 8"),
    (["simulate", "--inter-bandwidth", "10GB"], "--nodes 2"),
    (["simulate", "--nodes", "2", "--inter-bandwidth", "0"], "'0'"),
    (["simulate", "--nodes", "2", "--inter-bandwidth", "fast"], "'fast'"),
    (["simulate", "--nodes", "2", "--inter-latency", "-1"], "'-1'"),
    (["simulate", "--nodes", "2", "--inter-latency", "inf"], "'inf'"),
    (["simulate", "--param-bytes", "1GiB"], "--dp 2"),
    (["simulate", "--dp", "2", "--param-bytes", "1XB"], "'1XB'"),
    (["simulate", "--dp", "2", "--param-bytes", "1,-2"], "'1,-2'"),
    (["simulate", "--dp", "2", "-P", "4", "--param-bytes", "1,2"], "2 values"),
    (["simulate", "--no-overlap"], "--no-overlap"),
    # bounded input: every dimension of a schedule, and files that are not files
    (["simulate", "-v", "100000", "-s", "interleaved-1f1b"], "S=400000 stages"),
    (["simulate", "-v", "20000", "-s", "looped-bfs", "-P", "2", "-M", "2"], "S=40000 stages"),
    (["simulate", "-v", "64", "-s", "interleaved-1f1b", "-P", "16", "-M", "2048"], "2097152"),
    (["simulate", "-s", ""], "unknown schedule ''"),
    (["simulate", "--file", "/dev/zero"], "'/dev/zero' is a character device, not a file"),
    (["simulate", "--file", "/dev/urandom"], "'/dev/urandom' is a character device"),
    (["simulate", "--file", "fifo.json"], "is a FIFO (named pipe), not a file"),
    (["simulate", "--file", "adir"], "is a folder, not a file"),
    (["simulate", "--file", "huge.json"], "300.0 MiB, beyond the bound of 256.0 MiB"),
    (["simulate", "--file", "deep.json"], "nests JSON deeper than the parser follows"),
    # -- viz ----------------------------------------------------------------------
    (["viz", "-P", "0"], "must be a positive integer, got 0"),
    (["viz", "-M", "0"], "must be a positive integer, got 0"),
    (["viz", "-P", "100"], "100"),
    (["viz", "--max-P", "100000"], "100000"),
    (["viz", "--max-M", "0"], "0"),
    (["viz", "--serve", "--port", "70000"], "70000"),
    (["viz", "--serve", "--port", "-1"], "-1"),
    (["viz", "-o", ""], "''"),
    (["viz", "-o", "adir"], "adir"),
    (["viz", "-o", "/proc/x.html"], "/proc/x.html"),
    (["viz", "-o", "nodir/x.html"], "nodir"),
    (["viz", "--ratio", "0"], "0"),
    (["viz", "--ratio", "nan"], "nan"),
    (["viz", "--ratios", "1,x"], "1,x"),
    (["viz", "--plan", "missing.json"], "missing.json"),
    (["viz", "--plan", "ok.json"], "not a conveyor plan"),
    (["viz", "--plan", "broken.json"], "broken.json"),
    (["viz", "--plan", "ok.json", "-o", "x.html"], "x.html"),
    (["viz", "--plan", "ok.json", "--timeline", "tl.json"], "--timeline"),
    (["viz", "--jobs", "0"], "0"),
    (["viz", "--timeline", "missing.json"], "missing.json"),
    (["viz", "--timeline", "bigP.json"], BIG),
    (["viz", "--schedule", "nope"], "nope"),
    (["viz", "--view", "sideways"], "sideways"),
    (["viz", "-P", "3", "--max-P", "2"], "-P 3 is outside the page's 1..2"),
    (["viz", "--schedule", ""], "unknown schedule ''"),
    (["viz", "--timeline", "/dev/zero"], "character device"),
    (["viz", "--timeline", "fifo.json"], "FIFO"),
    (["viz", "--timeline", "deep.json"], "nests JSON deeper"),
    (["viz", "--plan", "/dev/urandom"], "character device"),
    (["viz", "--plan", "fifo.json"], "FIFO"),
    (["viz", "--plan", "deep.json"], "nests JSON deeper"),
    # -- plot ---------------------------------------------------------------------
    (["plot", "gantt", "-P", "0"], "0"),
    (["plot", "gantt", "-M", "0"], "0"),
    (["plot", "gantt", "-P", "100000"], "100000"),
    (["plot", "gantt", "--timeline", "bigP.json"], BIG),
    (["plot", "gantt", "-o", "ok.png", "-o", "/proc/x.svg"], "/proc/x.svg"),
    (["plot", "gantt", "-o", "out.pdf"], "out.pdf"),
    (["plot", "gantt", "-o", ""], "''"),
    (["plot", "gantt", "-o", "adir"], "adir"),
    (["plot", "gantt", "--ratio", "-2"], "-2"),
    (["plot", "gantt", "--schedule", "nope"], "nope"),
    (["plot", "gantt", "--timeline", "broken.json"], "broken.json"),
    (["plot", "gantt", "--timeline", "tl.json", "-P", "3"], "3"),
    (["plot", "gantt", "--compare"], "--compare draws a measured timeline"),
    (["plot", "gantt", "--schedule", ""], "unknown schedule ''"),
    (["plot", "gantt", "--timeline", "/dev/zero"], "character device"),
    (["plot", "gantt", "--timeline", "deep.json"], "nests JSON deeper"),
    (["plot", "gantt", "--timeline", "huge.json"], "beyond the bound"),
    (["plot", "bubble", "--timeline", "fifo.json"], "FIFO"),
    (["plot", "bubble", "--timeline", "deep.json"], "nests JSON deeper"),
    (["plot", "bubble", "-P", "0"], "0"),
    (["plot", "bubble", "--max-M", "0"], "0"),
    (["plot", "bubble", "--max-M", BIG], BIG),
    (["plot", "bubble", "-o", "x.gif"], "x.gif"),
    (["plot", "bubble", "--timeline", "missing.json"], "missing.json"),
    (["plot"], "FIGURE"),
    # -- trace --------------------------------------------------------------------
    (["trace", "-P", "0"], "0"),
    (["trace", "-M", "0"], "0"),
    (["trace", "-P", "100000"], "100000"),
    (["trace", "-o", "/proc/x.json"], "/proc/x.json"),
    (["trace", "-o", ""], "''"),
    (["trace", "-o", "adir"], "adir"),
    (["trace", "--timeline", "bigP.json"], BIG),
    (["trace", "--forward-only", "--timeline", "tl.json"], "--forward-only"),
    (["trace", "--timeline", "deep.json"], "nests JSON deeper"),
    (["trace", "--timeline", "fifo.json"], "FIFO"),
    (["trace", "--schedule", ""], "unknown schedule ''"),
    # -- demo (each must fail before any process starts) -----------------------------
    (["demo", "--out", "/proc/x"], "/proc/x"),
    (["demo", "--out", ""], "''"),
    (["demo", "--out", "afile"], "afile"),
    (["demo", "-P", "0"], "0"),
    (["demo", "-P", "100000"], "100000"),
    (["demo", "-M", "0"], "0"),
    (["demo", "--epochs", "0"], "0"),
    (["demo", "--batch-size", "0"], "0"),
    (["demo", "--batch-size", "4", "-M", "8"], "4"),
    (["demo", "--lr", "-1"], "-1"),
    (["demo", "--lr", "nan"], "nan"),
    (["demo", "--width", "0"], "0"),
    (["demo", "--schedule", "nope"], "nope"),
    # -- profile (each must fail before any layer is timed) ---------------------------
    (["profile", "--model", "nomodel.py:make"], "nomodel.py"),
    (["profile", "--model", "make"], "'make'"),
    (["profile", "--model", "no_such_module_xyz:make"], "no_such_module_xyz"),
    (["profile", "--model", "model.py:nothing"], "nothing"),
    (["profile", "--model", "model.py:wrong"], "(model, sample_batch)"),
    (["profile", "--model", "model.py:make", "--repeats", "0"], "0"),
    (["profile", "--model", "model.py:make", "--optimizer", "lion"], "lion"),
    (["profile", "--model", "model.py:make", "-o", "/proc/x.json"], "/proc/x.json"),
    (["profile", "--model", "model.py:make", "-o", "adir"], "adir"),
    # -- plan -----------------------------------------------------------------------
    (["plan", "--profile", "missing.json", "-P", "2", "--batch-size", "8"], "missing.json"),
    (["plan", "--profile", "broken.json", "-P", "2", "--batch-size", "8"], "broken.json"),
    (["plan", "--profile", "oldprof.json", "-P", "2", "--batch-size", "8"], "conveyor.profile/0"),
    (["plan", "--profile", "prof.json", "-P", "0", "--batch-size", "8"], "0"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "--memory", "12XB"],
     "12XB"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "2", "-M", "4"], "batch 2"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "-M", "4,x"], "4,x"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "--schedules", "nope"],
     "nope"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "--memory", "1KiB"],
     "1.00 KiB"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "-o", "/proc/x.json"],
     "/proc/x.json"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "-o", "nodir/p.json"],
     "nodir"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "--nodes", "3"],
     "--nodes 3 does not divide the 2 ranks"),
    (["plan", "--profile", "prof.json", "-P", "2", "--batch-size", "8", "--dp", "0"], "got 0"),
    (["plan", "--profile", "/dev/zero", "-P", "2", "--batch-size", "8"], "character device"),
    (["plan", "--profile", "fifo.json", "-P", "2", "--batch-size", "8"], "FIFO"),
    (["plan", "--profile", "deep.json", "-P", "2", "--batch-size", "8"], "nests JSON deeper"),
    (["plan", "--profile", "huge.json", "-P", "2", "--batch-size", "8"], "beyond the bound"),
    (["plan", "--profile", "oopsprof.json", "-P", "2", "--batch-size", "8"], "batch is 'oops'"),
    (["plan", "--profile", "strtime.json", "-P", "2", "--batch-size", "8"], "times must be numbers"),
    # -- torchrun (each must fail before torchrun starts) ---------------------------
    (["torchrun"], "give torchrun's options and the script"),
    # -- the entry point ----------------------------------------------------------
    (["nope"], "nope"),
    (["schedules", "--bogus"], "--bogus"),
]


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(tmp_path / "adir"))
    monkeypatch.setenv("NO_COLOR", "1")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    save_schedule(build_schedule("gpipe", 2, 2), tmp_path / "ok.json")
    (tmp_path / "placement.json").write_text(json.dumps(
        {"actions": [["0F0", "0B0"]], "placement": 5}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "action.csv").write_text("0F0,0X0\n")
    (tmp_path / "bigP.json").write_text(json.dumps(
        {"P": int(BIG), "M": 4, "S": 4, "schedule": "gpipe", "events": []}))
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with open(tmp_path / "huge.json", "wb") as f:  # sparse: no disk used
        f.truncate(300 * 2 ** 20)
    from tests.plan._profiles import synthetic
    prof = synthetic([1] * 4)
    prof.save(tmp_path / "prof.json")
    (tmp_path / "oopsprof.json").write_text(json.dumps(dict(prof.to_dict(), batch="oops")))
    bad_time = prof.to_dict()
    bad_time["layers"][1]["forward"]["fixed"] = "fast"
    (tmp_path / "strtime.json").write_text(json.dumps(bad_time))
    (tmp_path / "oldprof.json").write_text(json.dumps(
        dict(prof.to_dict(), format="conveyor.profile/0")))
    (tmp_path / "model.py").write_text(
        "import torch\n"
        "def make():\n    return torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.randn(4, 2)\n"
        "def wrong():\n    return 3\n")
    from conveyor.sim import CostModel, simulate
    simulate(build_schedule("gpipe", 2, 2), CostModel()).save(tmp_path / "tl.json")
    return tmp_path


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a) or "-" for a, _ in CASES])
def test_a_bad_invocation_is_one_clear_line(scratch, capsys, argv, names):
    before = _listing(scratch)
    t0 = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as e:  # only argparse's own --help/--version may exit
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: "), err
    assert names in lines[0], (names, lines[0])
    # Refused at once, not after reading a device or a FIFO or building a huge
    # schedule (each took minutes, or forever, before the bounds); 20 s is
    # generous on a loaded machine, the refusals take milliseconds.
    assert time.monotonic() - t0 < 20
    assert _listing(scratch) == before  # nothing written, nothing half-written
    assert not Path("/proc/x").exists()


def test_the_table_covers_every_sub_command():
    from conveyor.cli.main import COMMANDS

    covered = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 60
    assert covered >= {c for c in COMMANDS if c not in ("bench", "train")}


def test_viz_with_a_small_max_p_alone_is_fine(scratch, capsys):
    # The page's first P and M (4 and 8 by default) shrink to fit --max-P/--max-M;
    # only a -P the user typed can be refused.
    assert main(["viz", "--max-P", "2", "--max-M", "3", "--no-cache", "-o", "p.html"]) == 0
    assert (scratch / "p.html").stat().st_size > 0
