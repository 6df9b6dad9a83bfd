"""The explorer in headless Chromium (Debian's, through Playwright).

Skipped without /usr/bin/chromium unless CI=true, where that is a failure.
"""

from __future__ import annotations

import random
import threading

import pytest

from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate
from conveyor.views.data import build_data
from conveyor.views.metrics import fraction_text
from conveyor.views.page import render_page, write_page
from conveyor.views.serve import make_server

from tests.views.conftest import screenshot_dir
from tests.views.helpers import measured_like, registered_picky, registered_vshape

pytestmark = pytest.mark.browser


def _expect():
    from playwright.sync_api import expect
    return expect


def _python_idle_slots(name: str, P: int, M: int, *, forward_only: bool, ratio: float = 1.0):
    sched = build_schedule(name, P, M)
    if forward_only:
        sched = sched.without_backward()
    tl = simulate(sched, CostModel(forward=1, backward=ratio))
    return sum(b - a for r in range(P) for a, b in tl.idle_intervals(r))


def _open(page, path, requests=None):
    if requests is not None:
        page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri())
    page.evaluate("window.conveyor.ready")


def test_m_slider_shrinks_the_bubble(page, default_page, tmp_path):
    expect = _expect()
    _open(page, default_page)
    page.select_option("#schedule", "gpipe")
    page.locator("#P").fill("4")
    page.locator("#view-fwd").check()
    sim, formula, cells = page.locator("#bubble-sim"), page.locator("#bubble-formula"), \
        page.locator("#gantt rect.bubble")

    page.locator("#M").fill("1")
    expect(sim).to_have_text("3/4 = 75.0%")
    expect(formula).to_have_text("3/4 = 75.0%")
    assert cells.count() == _python_idle_slots("gpipe", 4, 1, forward_only=True) == 12

    page.locator("#M").fill("31")
    page.locator("#M").press("ArrowRight")            # a keyboard step on the slider: 31 -> 32
    expect(page.locator("#M-out")).to_have_text("32")
    expect(sim).to_have_text("3/35 = 8.6%")
    expect(formula).to_have_text("3/35 = 8.6%")
    assert cells.count() == _python_idle_slots("gpipe", 4, 32, forward_only=True) == 12
    assert page.locator("#gantt rect.cell.F").count() == 4 * 32
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-gpipe-P4-M32.png"),
                    full_page=True)

    # The training step with unit slots (B = F): still 3/35, twice the idle slots.
    page.locator("#view-step").check()
    page.locator("#ratio").fill("0")
    expect(page.locator("#ratio-out")).to_have_text("B = 1 × F")
    expect(sim).to_have_text("3/35 = 8.6%")
    assert cells.count() == _python_idle_slots("gpipe", 4, 32, forward_only=False) == 24
    assert page.locator("#gantt rect.cell.B").count() == 4 * 32
    assert page.locator("#check").is_hidden()        # page and Python agree


def test_bubble_cells_equal_python_idle_slots_across_configs(page, default_page):
    _open(page, default_page)
    for name, P, M in (("1f1b", 8, 16), ("gpipe", 3, 5), ("naive", 6, 40), ("1f1b", 1, 7)):
        for view in ("fwd", "step"):
            page.evaluate(f"window.conveyor.set({{schedule: '{name}', P: {P}, M: {M}, "
                          f"view: '{view}', ratio: 1}})")
            want = _python_idle_slots(name, P, M, forward_only=view == "fwd")
            assert page.locator("#gantt rect.bubble").count() == want, (name, P, M, view)


def test_file_url_makes_no_network_request(page, default_page):
    requests: list[str] = []
    _open(page, default_page, requests)
    page.select_option("#schedule", "1f1b")
    page.locator("#M").fill("64")
    page.locator("#P").fill("16")
    page.locator("#view-step").check()
    page.locator("#ratio").fill("3")
    page.evaluate("window.conveyor.ready")
    assert requests and requests[0] == default_page.as_uri()
    assert [u for u in requests if not u.startswith("file://")] == []


def _sample_states(names, P_max, M_max, ratios, n, seed=0):
    rng = random.Random(seed)
    fixed = [(names[0], 1, 1), (names[-1], P_max, M_max)]
    picks = fixed + [(rng.choice(names), rng.randint(1, P_max), rng.randint(1, M_max))
                     for _ in range(n)]
    for name, P, M in picks:
        yield {"schedule": name, "P": P, "M": M, "view": "fwd", "ratio": ratios[0]}
        yield {"schedule": name, "P": P, "M": M, "view": "step", "ratio": rng.choice(ratios)}


def _assert_same_as_python(page, states):
    for st in states:
        js = page.evaluate("st => window.conveyor.timeline(st)", st)
        sched = build_schedule(st["schedule"], st["P"], st["M"])
        if st["view"] == "fwd":
            sched = sched.without_backward()
        tl = simulate(sched, CostModel(forward=1, backward=st["ratio"]))
        py = [[e.rank, str(e.action), e.start, e.end] for e in tl.events]
        assert sorted(js) == sorted(py), st          # exactly equal times, no tolerance


def test_page_timings_equal_python_simulate(page, default_page, default_data):
    _open(page, default_page)
    names = [s["name"] for s in default_data["schedules"]]
    _assert_same_as_python(page, _sample_states(names, 16, 64, default_data["ratios"], 12))
    # and every embedded configuration's step time and bubble equal Python's
    check = page.evaluate("window.conveyor.selfCheck()")
    assert check["n_bad"] == 0, check["mismatches"]
    assert check["checked"] == len(names) * 16 * 64 * (1 + len(default_data["ratios"]))


def test_page_is_generic_over_chunks_and_split_backward(page, tmp_path):
    with registered_vshape() as name:
        data = build_data(names=[name, "1f1b"], P_max=4, M_max=6, ratios=(1, 1.5),
                          jobs=1, cache=False)
        path = write_page(tmp_path / "v.html", render_page(
            data, initial={"schedule": name, "P": 3, "M": 4, "view": "step", "ratio": 1.5}))
        _open(page, path)
        _assert_same_as_python(page, _sample_states([name], 4, 6, [1, 1.5], 6))
    assert page.evaluate("window.conveyor.selfCheck()")["n_bad"] == 0
    assert page.locator("#gantt rect.cell.I").count() == 6 * 4
    assert page.locator("#gantt rect.cell.W").count() == 6 * 4
    assert page.locator("#gantt text.row").first.text_content() == "rank 0 (s 0,5)"
    _expect()(page.locator("#bubble-formula")).to_have_text("no closed form")


def test_a_refused_configuration_shows_the_generators_reason(page, tmp_path):
    expect = _expect()
    with registered_picky() as name:
        data = build_data(names=[name], P_max=4, M_max=8, ratios=(2,), jobs=1, cache=False)
    path = write_page(tmp_path / "p.html", render_page(
        data, initial={"schedule": name, "P": 4, "M": 8, "view": "step", "ratio": 2}))
    _open(page, path)
    assert page.locator("#gantt rect.cell").count() == 64
    page.locator("#M").fill("6")
    expect(page.locator("#gantt .refused")).to_have_text(
        "test-picky needs M to be a multiple of P (P=4, M=6); use M=8")
    assert page.locator("#gantt rect").count() == 0
    expect(page.locator("#bubble-sim")).to_have_text("–")
    check = page.evaluate("window.conveyor.selfCheck()")
    assert check["n_bad"] == 0 and check["checked"] == 2 * sum(8 // P for P in range(1, 5))


def test_measured_run_above_its_simulation(page, tmp_path):
    tl = measured_like("1f1b", 4, 8, seed=7)
    from conveyor.views.measured import measured_section
    sec = measured_section(tl, source="run.json")
    data = build_data(P_max=4, M_max=8, jobs=1, cache=False)
    path = write_page(tmp_path / "m.html", render_page(
        data, measured=sec, initial={"schedule": "1f1b", "P": 4, "M": 8, "view": "step",
                                     "ratio": 2}))
    requests: list[str] = []
    _open(page, path, requests)
    expect = _expect()
    expect(page.locator("#measured-title")).to_contain_text("1f1b, P = 4, M = 8 (run.json)")
    expect(page.locator("#bubble-measured")).to_have_text(fraction_text(None, tl.bubble_overall))
    sim_bubble = sec["simulated"]["bubble"]
    expect(page.locator("#bubble-measured-sim")).to_have_text(fraction_text(None, sim_bubble))
    for box in ("#gantt-measured", "#gantt-measured-sim"):
        assert page.locator(f"{box} rect.cell").count() == 64
        assert page.locator(f"{box} rect.idle").count() > 0
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-measured.png"), full_page=True)
    assert all(u.startswith("file://") for u in requests)


@pytest.fixture
def served():
    srv = make_server(port=0, P_max=8, M_max=32,
                      initial={"schedule": "gpipe", "P": 4, "M": 8, "view": "fwd", "ratio": 2})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def test_served_page_draws_python_results(page, served):
    expect = _expect()
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(served)
    page.evaluate("window.conveyor.ready")
    page.locator("#M").fill("32")
    expect(page.locator("#bubble-sim")).to_have_text("3/35 = 8.6%")
    expect(page.locator("#idle-slots")).to_have_text("12")
    assert page.locator("#gantt rect.bubble").count() == 12
    assert requests and all(u.startswith("http://127.0.0.1:") for u in requests)
