"""Why is this rank idle? The explorer's explanations and critical path in
headless Chromium, held to conveyor.sim.critical; measured runs drawn with
their idle time split into waiting on a peer and transfer in flight, the late
message named, and several steps' spread per rank."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conveyor.schedule import build_schedule
from conveyor.schedule.auto import zb_auto
from conveyor.sim import CostModel, bindings, critical_path, load_timeline, simulate
from conveyor.views.idle import idle_totals
from conveyor.views.measured import measured_section
from conveyor.views.page import render_page, write_page
from conveyor.views.steps import steps_section

from tests.views.conftest import screenshot_dir
from tests.views.test_browser import _cost_model, _expect, _open, _random_costs, _typed

pytestmark = pytest.mark.browser
SWEEP = Path(__file__).parent / "data" / "sweep"
NS = "{http://www.w3.org/2000/svg}"


def _click_idle(page, r, t, panel=0):
    xy = page.evaluate(f"window.conveyor.idlePoint({panel}, {r}, {t})")
    assert xy is not None, (r, t)
    page.mouse.click(*xy)
    return page.locator("#explain")


@pytest.mark.parametrize("name, view, r, t", [
    ("gpipe", "fwd", 2, 0.5),     # the fill: rank 2 waits for stage 1's first forward
    ("1f1b", "step", 0, 4.5),     # after the warm-up: rank 0 waits for the first gradient
    ("zbv", "step", 3, 0.2),      # a V schedule: rank 3 holds stages 3 and 4
])
def test_clicking_an_idle_cell_names_what_it_waits_for(page, default_page, name, view, r, t,
                                                       tmp_path):
    _open(page, default_page)
    page.evaluate(f"window.conveyor.set({{schedule: '{name}', compare: '', P: 4, M: 8, "
                  f"view: '{view}', ratio: 2}})")
    box = _click_idle(page, r, t)
    _expect()(box).to_be_visible()
    text = box.text_content()
    # Python's answer: the action that ends the gap, and what it waited for
    sched = build_schedule(name, 4, 8).compute_only()
    if view == "fwd":
        sched = sched.without_backward()
    costs = CostModel(forward=0.5 if sched.S > 4 else 1, backward=1 if sched.S > 4 else 2)
    tl = simulate(sched, costs)
    gap = next((a, b) for a, b in tl.idle_intervals(r) if a <= t < b)
    nxt = next(e for e in tl.rank_events(r) if e.start == gap[1])
    why = bindings(sched, tl, costs)[nxt.action]
    assert why.via == "data"
    dep = why.waited_for
    assert f"rank {r} idle from {gap[0]:g} to {gap[1]:g}" in text
    assert f"it waits for {dep} (" in text and f"stage {dep.stage}, rank {sched.placement[dep.stage]})" in text
    assert f"then {nxt.action} starts" in text
    assert "rank 0: 0F0" in text                                # the chain reaches the step's start
    # the chosen cell and its chain are drawn, and the legend says so
    _expect()(page.locator("#legend")).to_contain_text("what the chosen cell waits for")
    page.screenshot(path=str(screenshot_dir(tmp_path) / f"explain-{name}.png"), full_page=True)


def test_keys_walk_the_idle_cells(page, default_page):
    expect = _expect()
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'gpipe', compare: '', P: 4, M: 4, view: 'fwd', ratio: 2})")
    page.locator("#gantt").focus()
    page.keyboard.press(".")
    expect(page.locator("#explain")).to_contain_text("rank 1 idle from 0 to 1")   # earliest first
    page.keyboard.press(".")
    expect(page.locator("#explain")).to_contain_text("rank 2 idle from 0 to 2")
    page.keyboard.press("Escape")
    expect(page.locator("#explain")).to_be_hidden()
    page.locator("#M").fill("5")                               # another state drops the choice
    assert page.evaluate("window.conveyor.explained()") is None


def test_critical_path_equals_the_simulators(page, default_page, default_data):
    _open(page, default_page)
    rng = random.Random(3)
    names = [s["name"] for s in default_data["schedules"]]
    for k in range(12):
        name, P, M = rng.choice(names), rng.randint(1, 8), rng.randint(1, 16)
        sched = build_schedule(name, P, M).compute_only()
        c = _random_costs(rng, sched.S)
        page.evaluate("st => window.conveyor.set(st)", {"schedule": name, "compare": "", "P": P,
                                                        "M": M, "view": "step", "costs": _typed(c),
                                                        "critical": True})
        costs = _cost_model(sched.S, P, c)
        if name == "zb-auto":  # solved for these costs, in the page and here
            sched = zb_auto(P, M, costs=costs)
        py = [[b.rank, str(b.action), b.via] for b in critical_path(sched, simulate(sched, costs), costs)]
        assert page.evaluate("window.conveyor.criticalPath()") == py, (name, P, M, c)
    # drawn: one outline per action on the path
    svg = ET.fromstring(page.evaluate("window.conveyor.svgText()"))
    outlined = [e for e in svg.iter(NS + "rect") if e.get("class") == "critical"]
    assert len(outlined) == len(py)
    assert "critical path of the step" in page.locator("#legend").text_content()


def _measured_page(tmp_path, default_data, name="M01.json"):
    tl = load_timeline(SWEEP / name)
    sec = measured_section(tl, source=name)
    path = write_page(tmp_path / "m.html", render_page(
        default_data, measured=sec, initial={"schedule": "gpipe", "P": 4, "M": tl.M, "view": "step",
                                             "ratio": 2}))
    return tl, path


@pytest.mark.parametrize("run", ["M01.json", "M16.json"])
def test_measured_bubble_area_equals_its_number(page, tmp_path, default_data, run):
    tl, path = _measured_page(tmp_path, default_data, run)
    _open(page, path)
    shares = idle_totals(tl)
    out = page.evaluate("window.conveyor.measuredSvg()")
    svg = ET.fromstring(out)
    geo = page.evaluate("window.conveyor.measuredShown().geometry")
    plot = geo["plotW"] * tl.P                         # rank-time, in drawn pixels
    for cls, share in (("bubble", shares["wait"]), ("transfer", shares["transfer"])):
        area = sum(float(e.get("width")) for e in svg.iter(NS + "rect") if e.get("class") == cls)
        assert area / plot == pytest.approx(share, rel=0.01), cls
    text = page.locator("#bubble-measured").text_content()
    assert text == f"{100 * shares['wait']:.1f}%"
    assert idle_totals(tl)["idle"] == pytest.approx(tl.bubble_overall, abs=1e-12)
    page.screenshot(path=str(screenshot_dir(tmp_path) / f"measured-{run[:-5]}.png"), full_page=True)


def test_a_measured_wait_names_the_late_message_and_its_sender(page, tmp_path, default_data):
    tl, path = _measured_page(tmp_path, default_data, "M01.json")
    _open(page, path)
    # rank 1 starts by waiting for micro-batch 0's activations from rank 0
    sec = page.evaluate("window.conveyor.measuredShown().ms.measured")
    piece = next(p for p in sec["pieces"] if p[0] == 1 and p[3] == 0 and p[4] >= 0)
    msg = sec["messages"][piece[4]]
    assert (msg[0], msg[2], msg[3]) == ("1RECV_F0", "0SEND_F0", 0)
    text = page.evaluate(f"window.conveyor.explainMeasured({piece})")
    assert "waiting on a peer (bubble)" in text and "from rank 0" in text
    assert "The late message: 0SEND_F0 from rank 0" in text


def test_several_steps_show_the_spread_per_rank_and_the_straggler(page, tmp_path, default_data):
    expect = _expect()
    files = sorted((Path(__file__).parent / "data" / "steps").glob("step*.json"))  # a real run
    sp = steps_section([load_timeline(f) for f in files], files)
    path = write_page(tmp_path / "s.html", render_page(
        default_data, steps=sp, initial={"schedule": "1f1b", "P": 4, "M": 8, "view": "step"}))
    _open(page, path)
    expect(page.locator("#straggler")).to_contain_text("Straggler: rank 2")
    rows = page.locator("#spread tr")
    expect(rows).to_have_count(5)
    assert rows.nth(3).locator("th").text_content() == "2 (straggler)"
    med, worst = sp["busy"][2]
    assert re.search(rf"{med * 1e3:.4g} ms / {worst * 1e3:.4g} ms", rows.nth(3).text_content())
    expect(page.locator("#step-pick-out")).to_contain_text("the median step")
    page.locator("#step-pick").fill("0")
    expect(page.locator("#measured-head")).to_have_text("measured (step1.json)")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-steps.png"), full_page=True)
