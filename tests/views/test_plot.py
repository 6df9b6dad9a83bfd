import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conveyor.errors import TimelineError
from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate
from conveyor.views.errors import ViewError
from conveyor.views.plot import bubble_vs_m_figure, gantt_figure, save_figure

from tests.views.conftest import REPO
from tests.views.helpers import measured_like, registered_vshape

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_views_import_without_torch_or_matplotlib():
    code = ("import sys, conveyor.views.page, conveyor.views.plot, conveyor.views.trace, "
            "conveyor.views.serve, conveyor.cli.viz, conveyor.cli.plot, conveyor.cli.trace\n"
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr


def test_gantt_png_and_svg(tmp_path):
    tl = simulate(build_schedule("1f1b", 4, 8), CostModel(forward=1, backward=2))
    fig = gantt_figure(tl)
    png = save_figure(fig, tmp_path / "g.png")
    svg = save_figure(fig, tmp_path / "g.svg")
    assert png.read_bytes()[:8] == PNG_MAGIC
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "bubble 3/11 = 27.3%" in svg.read_text()             # the title names the bubble
    assert fig.axes[0].get_yticklabels()[3].get_text() == "stage 3"


def test_gantt_of_measured_above_simulated(tmp_path):
    tl = measured_like("gpipe", 4, 6)
    sim = simulate(build_schedule("gpipe", 4, 6), CostModel(forward=0.01, backward=0.02),
                   unit="s")
    with pytest.raises(ViewError, match="different time units"):
        gantt_figure([tl, simulate(build_schedule("gpipe", 4, 6))])
    fig = gantt_figure([tl, sim])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xlabel() == "time (ms)"
    assert "measured" in fig.axes[0].get_title(loc="left")
    assert "simulated" in fig.axes[1].get_title(loc="left")
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()    # one time scale


def test_gantt_with_chunks_labels_ranks():
    with registered_vshape():
        tl = simulate(build_schedule("test-vshape", 2, 3))
    fig = gantt_figure(tl)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["rank 0", "rank 1"]


def test_bubble_vs_m_with_measured_points(tmp_path):
    runs = [measured_like("gpipe", 4, M, seed=M) for M in (2, 8, 32)]
    fig = bubble_vs_m_figure("gpipe", 4, M_max=32, measured=runs)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"formula", "simulated (B = 2F)", "measured"}
    assert lines["formula"].get_ydata()[0] == pytest.approx(0.75)
    assert lines["formula"].get_ydata()[31] == pytest.approx(3 / 35)
    assert list(lines["measured"].get_xdata()) == [2, 8, 32]
    assert list(lines["measured"].get_ydata()) == [r.bubble_overall for r in runs]
    assert save_figure(fig, tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC


def test_bubble_vs_m_refuses_a_run_of_another_schedule():
    with pytest.raises(TimelineError, match="P=4 but P=2"):
        bubble_vs_m_figure("gpipe", 2, measured=[measured_like("gpipe", 4, 8)])


def test_unknown_format_is_refused_and_nothing_written(tmp_path):
    fig = gantt_figure(simulate(build_schedule("gpipe", 2, 2)))
    with pytest.raises(ViewError, match="end the name with .png or .svg"):
        save_figure(fig, tmp_path / "g.jpg")
    with pytest.raises(ViewError, match="does not exist"):
        save_figure(fig, tmp_path / "nowhere" / "g.png")
    assert list(tmp_path.iterdir()) == []


def test_docs_figure_is_small():
    path = REPO / "docs" / "bubble_vs_m.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size < 200_000


def test_a_measured_point_above_the_simulated_ones_is_not_clipped():
    # On shared cores a measured bubble sits far above the simulated curve:
    # here the last rank starts 10 s late, so the bubble is above 90 %.
    run = measured_like("gpipe", 4, 32, seed=3)
    late = [type(e)(e.rank, e.action, e.start + 10.0, e.end + 10.0) if e.rank == 3 else e
            for e in run.events]
    slow = type(run)(P=4, M=32, S=4, schedule="gpipe", source="measured", unit="s", events=late)
    fig = bubble_vs_m_figure("gpipe", 4, M_max=32, measured=[slow])
    lo, hi = fig.axes[0].get_ylim()
    assert slow.bubble_overall > 0.9 and lo <= slow.bubble_overall <= hi
