"""The explorer in headless Chromium (Debian's, through Playwright).

Skipped without /usr/bin/chromium unless CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import random
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, formula_bubble, load_timeline, simulate
from conveyor.views.data import build_data
from conveyor.views.idle import idle_totals
from conveyor.views.measured import cpu_note, measured_section
from conveyor.views.metrics import fraction_text, percent_text
from conveyor.views.page import render_page, write_page
from conveyor.views.serve import make_server
from conveyor.views.sweep import sweep_section

from tests.views.conftest import screenshot_dir
from tests.views.helpers import registered_picky, registered_vshape, stage_values

pytestmark = pytest.mark.browser
SWEEP = Path(__file__).parent / "data" / "sweep"


def _expect():
    from playwright.sync_api import expect
    return expect


def _open(page, url, requests=None):
    if requests is not None:
        page.on("request", lambda req: requests.append(req.url))
    page.goto(url if isinstance(url, str) else url.as_uri())
    page.evaluate("window.conveyor.ready")


def _row(page, i=0):
    """The i-th schedule's row of the stats table, as its cells' texts."""
    return page.locator("#stats tr").nth(i + 1).locator("th, td").all_text_contents()


def test_seed_numbers_and_hatched_bubble(page, default_page, tmp_path):
    expect = _expect()
    requests: list[str] = []
    _open(page, default_page, requests)
    page.select_option("#schedule", "gpipe")
    page.locator("#P").fill("4")
    page.locator("#view-fwd").check()
    cell = page.locator("#stats tr").nth(1).locator("td.b")
    page.locator("#M").fill("1")
    expect(cell).to_have_text("3/4 = 75.0%")
    assert _row(page)[3] == "3/4 = 75.0%"                     # the formula column
    page.locator("#M").fill("31")
    page.locator("#gantt").focus()
    page.keyboard.press("ArrowRight")                         # keyboard control on the chart: M 31 -> 32
    expect(page.locator("#M-out")).to_have_text("32")
    expect(cell).to_have_text("3/35 = 8.6%")
    # The drawn idle intervals are Python's, one hatched rect each.
    tl = simulate(build_schedule("gpipe", 4, 32).without_backward(), CostModel(forward=1))
    gaps = page.evaluate("window.conveyor.models[0].lay.gaps")
    assert sorted(gaps) == sorted([r, a, b] for r in range(4) for a, b in tl.idle_intervals(r))
    svg = ET.fromstring(page.evaluate("window.conveyor.svgText()"))
    ns = "{http://www.w3.org/2000/svg}"
    assert len([e for e in svg.iter(ns + "rect") if e.get("class") == "bubble"]) == len(gaps)
    assert len([e for e in svg.iter(ns + "rect") if e.get("class") == "cell F"]) == 4 * 32
    # accessible name and text summary say the same numbers
    label = page.locator("#gantt-canvas").get_attribute("aria-label")
    assert "gpipe with P = 4 ranks and M = 32 micro-batches" in label and "bubble 8.6%" in label
    assert page.locator("#check").is_hidden()
    legend = page.locator("#legend").text_content()
    assert "bubble" in legend and "F forward" in legend
    assert "B backward" not in legend and "W weight" not in legend   # only what is drawn
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-gpipe-P4-M32.png"), full_page=True)
    assert [u for u in requests if not u.startswith("file://")] == []


def _random_costs(rng: random.Random, S: int, P: int | None = None, unit: str = "stage") -> dict:
    """Random typed costs: one value for all stages, or one per stage (S of
    them; "stage" unit) or per P-th of the model (P of them; "model" unit)."""
    n = S if unit == "stage" else P

    def values(lo, hi):
        k = rng.choice([1, n])
        return [round(rng.uniform(lo, hi), 2) for _ in range(k)]
    return {"unit": unit, "F": values(0.3, 2), "I": values(0.3, 2), "W": values(0, 1.5),
            "lat": round(rng.choice([0, rng.uniform(0, 1)]), 3),
            "bytes": rng.choice([0, 1000, 2048]), "bw": rng.choice(["inf", 4000, 512])}


def _typed(c: dict) -> dict:
    return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in c.items()}


def _python_events(name, P, M, view, c):
    return [[e.rank, str(e.action), e.start, e.end]
            for e in _python_timeline(name, P, M, view, c).events]


def _cost_model(S, P, c, scale=1.0, dp=None) -> CostModel:
    """The CostModel the page's typed costs ``c`` stand for (see costs.js)."""
    unit = c.get("unit", "model")
    f, i, w = (stage_values(c[k], S, P, unit) for k in ("F", "I", "W"))
    if scale != 1:
        f, i, w = ([x * scale for x in xs] for xs in (f, i, w))
    b = [x + y for x, y in zip(i, w)]
    extra = {} if dp is None else dict(
        dp=dp["dp"], ranks_per_node=dp["rpn"] or None, inter_latency=dp["ilat"],
        inter_bandwidth=float(dp["ibw"]), allreduce_overlap=dp["ar"] == "overlap",
        param_bytes=stage_values(dp["pb"], S, P, unit))
    return CostModel(forward=f, backward=b, input_grad=i, weight_grad=w, latency=c["lat"],
                     bandwidth=float(c["bw"]), activation_bytes=c["bytes"], **extra)


def _python_timeline(name, P, M, view, c, dp=None):
    sched = build_schedule(name, P, M).compute_only()
    if view == "fwd":
        sched = sched.without_backward()
    scale = M / sched.M          # naive runs the same batch as one bigger micro-batch
    return simulate(sched, _cost_model(sched.S, P, c, scale, dp))


def test_random_costs_replay_exactly_as_python_simulate(page, default_page, default_data):
    _open(page, default_page)
    rng = random.Random(13)
    names = [s["name"] for s in default_data["schedules"]
             if "solver" not in s and "rounds" not in s]  # decode: its own test below
    for k in range(16):
        name, P, M = rng.choice(names), rng.randint(1, 16), rng.randint(1, 64)
        view = "fwd" if k % 4 == 0 else "step"
        c = _random_costs(rng, build_schedule(name, P, M).S, P, ["stage", "model"][k % 2])
        js = page.evaluate("st => window.conveyor.timeline(st)",
                           {"schedule": name, "compare": "", "P": P, "M": M, "view": view,
                            "costs": _typed(c)})
        assert js is not None, (name, P, M, view, c)  # None: the page refused the costs
        assert sorted(js) == sorted(_python_events(name, P, M, view, c)), (name, P, M, view, c)
    # and every embedded configuration's step time and bubble equal Python's
    check = page.evaluate("window.conveyor.selfCheck()")
    assert check["n_bad"] == 0, check["mismatches"]
    embedded = sum(1 for sc in default_data["schedules"] if "configs" in sc
                   for row in sc["configs"] for rec in row if "r" in rec)
    assert embedded == (len(names) + 1) * 16 * 7            # M = 1, 2, 4, ..., 64; decode
    assert check["checked"] == embedded * (1 + len(default_data["ratios"]))


def test_decode_lanes_replay_as_python_simulates_them(page, default_page):
    """The decode entry: each round's stage costs a whole P-th of the model
    (costs.js), as simulate_decode gives it; the idle fraction falls from
    (P-1)/P as lanes fill, and the table counts tokens per time unit."""
    from conveyor.sim.decode import simulate_decode
    from conveyor.views.decodedata import TOKENS

    expect = _expect()
    _open(page, default_page)
    for P, M, F, lat in ((4, 1, "1", 0), (4, 4, "0.5,1,1,2", 0.25), (3, 7, "1.5", 0)):
        c = {"unit": "model", "F": F, "I": "1", "W": "1", "lat": str(lat), "bytes": "0",
             "bw": "inf"}
        js = page.evaluate("st => window.conveyor.timeline(st)",
                           {"schedule": "decode", "compare": "", "P": P, "M": M, "view": "fwd",
                            "costs": c})
        step = [float(x) for x in F.split(",")]
        tl = simulate_decode(P, M, new_tokens=TOKENS, step=step if len(step) > 1 else step[0],
                             latency=lat)
        want = [(e.rank, str(e.action), e.start, e.end) for e in tl.events
                if e.action.kind == "F"]
        got = [tuple(e) for e in js if e[1].split("F")[0].isdigit()]  # compute: "{vs}F{lane}"
        assert sorted(got) == sorted(want), (P, M, F)
    page.evaluate("st => window.conveyor.timeline(st)",
                  {"schedule": "decode", "compare": "", "P": 4, "M": 1, "view": "fwd",
                   "costs": {"F": "1", "lat": "0"}})
    cell = page.locator("#stats tr").nth(1).locator("td.b")
    expect(cell).to_have_text("3/4 = 75.0%")
    page.locator("#M").fill("8")
    expect(cell).to_have_text("3/67 = 4.5%")
    assert "8 lanes · 0.955224 tokens per time unit" in _row(page)[1]  # 64 tokens, 67 slots


def test_dp_all_reduce_replays_exactly_as_python_simulate(page, default_page):
    # The page's data-parallel costs (replicas, ranks per node, links between
    # nodes, parameter bytes, overlap) give Python's events and all-reduces.
    _open(page, default_page)
    rng = random.Random(29)
    for k in range(10):
        name = rng.choice(["1f1b", "interleaved-1f1b", "zb-h1", "zbv", "gpipe"])
        P, M = rng.randint(2, 8), rng.randint(1, 16)
        S = build_schedule(name, P, M).S
        c = _random_costs(rng, S)
        pb = [rng.choice([0, 500, 4096]) for _ in range(rng.choice([1, S]))]
        dp = {"dp": rng.choice([2, 3, 8, 64]), "rpn": rng.choice([0, 1, 2, 3, 8]),
              "ilat": round(rng.uniform(0, 2), 3), "ibw": rng.choice(["inf", 100, 37]),
              "pb": pb, "ar": rng.choice(["overlap", "after"])}
        typed = _typed({**c, **dp})
        js = page.evaluate("st => window.conveyor.timeline(st)",
                           {"schedule": name, "compare": "", "P": P, "M": M, "view": "step",
                            "costs": typed})
        assert js is not None, (name, P, M, c, dp)
        tl = _python_timeline(name, P, M, "step", c, dp)
        assert sorted(js) == sorted([e.rank, str(e.action), e.start, e.end] for e in tl.events)
        assert sorted(page.evaluate("window.conveyor.collectives()")) == sorted(
            list(x) for x in tl.collectives), (name, P, M, c, dp)
    assert tl.collectives  # the last case draws some: the SVG has one rect per all-reduce
    svg = ET.fromstring(page.evaluate("window.conveyor.svgText()"))
    ns = "{http://www.w3.org/2000/svg}"
    rects = [e for e in svg.iter(ns + "rect") if e.get("class") == "allreduce"]   # not the legend's
    assert len(rects) == len(tl.collectives)
    assert "all-reduce" in page.locator("#legend").text_content()
    assert "dp=" in page.evaluate("window.conveyor.hash()")


def test_side_by_side_on_one_axis_with_the_same_batch(page, default_page, tmp_path):
    expect = _expect()
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'naive', compare: '1f1b', P: 4, M: 8, "
                  "view: 'step', ratio: 2})")
    expect(page.locator("#M-out")).to_contain_text("1 (fixed")
    naive, ofob = _row(page, 0), _row(page, 1)
    # naive runs the 8 micro-batches' data as one: F = 8, B = 16 per stage
    t_naive = simulate(build_schedule("naive", 4, 8), CostModel(forward=8, backward=16)).step_time
    t_1f1b = simulate(build_schedule("1f1b", 4, 8), CostModel(forward=1, backward=2)).step_time
    assert (naive[0], naive[4], naive[5]) == ("naive", f"{t_naive:g}", f"{t_naive / 8:g}")
    assert (ofob[0], ofob[4], ofob[5]) == ("1f1b", f"{t_1f1b:g}", f"{t_1f1b / 8:g}")
    assert naive[1].startswith("1 (fixed") and ofob[1] == "8"
    assert naive[6] == "8 · 8 · 8 · 8" and ofob[6] == "4 · 3 · 2 · 1"    # peak memory per rank
    # one time axis for both: the SVG's axis spans the longer step
    ticks = ET.fromstring(page.evaluate("window.conveyor.svgText()")).iter(
        "{http://www.w3.org/2000/svg}text")
    assert max(float(t.text) for t in ticks if (t.text or "").isdigit()) <= t_naive
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-side-by-side.png"), full_page=True)


def test_a_cost_change_redraws_and_a_bad_one_says_why(page, default_page):
    expect = _expect()
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: '1f1b', compare: '', P: 4, M: 8, view: 'step', "
                  "ratio: 2})")
    page.locator("#cost-F").fill("1,3,1,1")                  # a slow stage 1
    c = {"F": [1, 3, 1, 1], "I": [1], "W": [1], "lat": 0, "bytes": 0, "bw": "inf"}
    T = max(e[3] for e in _python_events("1f1b", 4, 8, "step", c))
    expect(page.locator("#stats tr").nth(1).locator("td").nth(3)).to_have_text(f"{T:g}")
    page.locator("#cost-lat").fill("0.5")
    c["lat"] = 0.5
    T2 = max(e[3] for e in _python_events("1f1b", 4, 8, "step", c))
    expect(page.locator("#stats tr").nth(1).locator("td").nth(3)).to_have_text(f"{T2:g}")
    page.locator("#P").fill("5")                             # 4 values of F, P = 5
    expect(page.locator("#cost-error")).to_contain_text(
        "1f1b: F has 4 values: give 1, or 5 (one per P-th of the model")
    expect(page.locator("#cost-F")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#stats tr").nth(1).locator("td").nth(3)).to_have_text(f"{T2:g}")
    page.locator("#P").fill("4")
    expect(page.locator("#cost-error")).to_be_hidden()
    page.locator("#cost-W").fill("x")
    expect(page.locator("#cost-error")).to_contain_text('W "x" is not a number')
    expect(page.locator("#cost-W")).to_have_class("invalid")
    expect(page.locator("#stats tr").nth(1).locator("td").nth(3)).to_have_text(f"{T2:g}")


def test_url_hash_round_trip(page, browser, default_page):
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: '1f1b', compare: 'gpipe', P: 6, M: 12, "
                  "view: 'step', costs: {F: '1,2,1,1,1,1', I: '0.5', W: '0.75', lat: '0.25'}, "
                  "fixed: true})")
    url, rows = page.url, [_row(page, 0), _row(page, 1)]
    assert "#" in url and "P=6" in url and "c=gpipe" in url
    other = browser.new_page()
    _open(other, url)
    assert other.evaluate("location.hash") == page.evaluate("location.hash")
    assert [_row(other, 0), _row(other, 1)] == rows
    assert other.locator("#fixed").is_checked() and other.locator("#cost-F").input_value() == "1,2,1,1,1,1"
    other.close()


def test_downloads_are_opaque_and_hold_the_legend_and_the_curve(page, default_page, tmp_path):
    from PIL import Image
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'gpipe', compare: '1f1b', P: 4, M: 8, "
                  "view: 'step', ratio: 2})")
    with page.expect_download() as d:
        page.locator("#download-svg").click()
    svg_path = tmp_path / d.value.suggested_filename
    d.value.save_as(svg_path)
    assert svg_path.name == "conveyor-gpipe-vs-1f1b-P4-M8.svg"
    root = ET.parse(svg_path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == ns + "svg" and root.get("role") == "img"
    cells = [e for e in root.iter(ns + "rect") if (e.get("class") or "").startswith("cell")]
    assert len(cells) == 2 * 4 * 8 * 2                      # F and B of both schedules
    texts = [t.text or "" for t in root.iter(ns + "text")]
    assert "bubble: the rank waits on a peer" in texts     # the legend
    assert any(t.startswith("bubble vs M") for t in texts)  # the curve, with its key
    assert "gpipe: closed form" in texts and "1f1b: simulated" in texts
    first = next(e for e in root if e.tag == ns + "rect")   # under everything: white
    assert first.get("fill") == "#fff" and first.get("width") == root.get("width")
    chart_h = page.evaluate("document.getElementById('gantt-canvas').clientHeight")
    assert float(root.get("height")) > chart_h + 150       # chart, legend and curve
    with page.expect_download() as d:
        page.locator("#download-png").click()
    png = tmp_path / "x.png"
    d.value.save_as(png)
    img = Image.open(png)
    css_w = page.evaluate("document.getElementById('gantt-canvas').clientWidth")
    assert img.size[0] == css_w * page.evaluate("devicePixelRatio") and img.size[1] > chart_h + 150
    assert img.convert("RGBA").getextrema()[3] == (255, 255)  # opaque: readable on any viewer


def test_measured_view_splits_idle_into_bubble_and_transfer(page, tmp_path, default_data):
    tl = load_timeline(SWEEP / "M04.json")                   # a real run, with SEND/RECV events
    sec = measured_section(tl, source="M04.json")
    sec["note"] = cpu_note(tl, cores=2)                      # as on a 2-core machine
    path = write_page(tmp_path / "m.html", render_page(
        default_data, measured=sec, initial={"schedule": "gpipe", "P": 4, "M": 4, "view": "step",
                                             "ratio": 2}))
    requests: list[str] = []
    _open(page, path, requests)
    expect = _expect()
    shares = idle_totals(tl)
    assert shares["transfer"] > 0 and shares["wait"] > 0
    expect(page.locator("#bubble-measured")).to_have_text(percent_text(shares["wait"]))
    expect(page.locator("#transfer-measured")).to_have_text(percent_text(shares["transfer"]))
    expect(page.locator("#idle-measured")).to_have_text(percent_text(tl.bubble_overall))
    legend = page.locator("#legend-measured")
    expect(legend).to_contain_text("bubble: the rank waits on a peer")
    expect(legend).to_contain_text("transfer in flight")
    expect(page.locator("#measured-note")).to_contain_text("4 processes share 2 CPU cores")
    expect(page.locator("#scale-note")).to_be_hidden()         # 132 vs 129 ms: one time axis
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-measured.png"), full_page=True)
    assert all(u.startswith("file://") for u in requests)


def test_measured_and_simulated_get_their_own_scales_beyond_3x(page, tmp_path, default_data):
    tl = load_timeline(SWEEP / "M04.json")
    sec = measured_section(tl, source="M04.json")
    # as if the run had been slowed 5x by something the simulator does not model
    sec["measured"]["events"] = [[r, a, 5 * t0, 5 * t1] for r, a, t0, t1 in sec["measured"]["events"]]
    sec["measured"]["T"] *= 5
    path = write_page(tmp_path / "m5.html", render_page(
        default_data, measured=sec, initial={"schedule": "gpipe", "P": 4, "M": 4, "view": "step"}))
    _open(page, path)
    _expect()(page.locator("#scale-note")).to_contain_text("5.1× the simulated one")


def test_sweep_small_multiples_follow_the_m_slider(page, tmp_path, default_data):
    sw = sweep_section(SWEEP)
    path = write_page(tmp_path / "s.html", render_page(
        default_data, sweep=sw, initial={"schedule": "gpipe", "P": 4, "M": 16, "view": "step",
                                         "ratio": 2}))
    _open(page, path)
    expect = _expect()
    caps = page.locator("#sweep-grid figcaption").all_text_contents()
    want = [f"M = {r['M']}: measured bubble "
            f"{percent_text(idle_totals(load_timeline(SWEEP / r['timeline']))['wait'])}"
            f" (formula {percent_text(r['formula'])})"
            for r in sorted(json.loads((SWEEP / "sweep.json").read_text())["rows"],
                            key=lambda r: r["M"])]
    assert caps == want
    measured = [idle_totals(load_timeline(SWEEP / f"M{M:02d}.json"))["wait"]
                for M in (1, 2, 4, 8, 16)]
    assert measured == sorted(measured, reverse=True)        # the bubble shrinks, measured
    expect(page.locator("#sweep-M-out")).to_have_text("16")
    points = page.evaluate("window.conveyor.sweepPointsFor(window.conveyor.state())")
    assert [M for M, _ in points] == [1, 2, 4, 8, 16]        # on the curve
    assert [b for _, b in points] == pytest.approx(measured, rel=1e-12)  # JSON may round a bit
    page.locator("#M").fill("4")                             # the explorer's M slider
    expect(page.locator("#sweep-M-out")).to_have_text("4")
    expect(page.locator(".sweep-cell.selected figcaption")).to_contain_text("M = 4:")
    expect(page.locator("#measured-head")).to_have_text("measured (M04.json)")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-sweep.png"), full_page=True)


def _box(page, sel):
    return page.evaluate(f"(() => {{ const b = document.querySelector('{sel}')"
                         f".getBoundingClientRect(); return [b.top, b.bottom, b.right, b.left]; }})()")


def test_400px_layout_puts_chart_and_m_slider_in_one_viewport(browser, default_page, tmp_path):
    context = browser.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    _open(page, default_page)
    for setting in ("{schedule: 'gpipe', compare: '', P: 4, M: 8, view: 'step', ratio: 2}",
                    "{schedule: 'gpipe', compare: '1f1b', P: 4, M: 8, view: 'fwd', ratio: 2}"):
        page.evaluate(f"window.conveyor.set({setting})")
        page.evaluate("window.scrollTo(0, 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        chart, slider = _box(page, "#gantt-canvas"), _box(page, "#M")
        assert chart[2] <= 400
        # the whole chart, then the M slider, with no scrolling
        assert 0 <= chart[0] and chart[1] <= slider[0] and slider[1] <= 800, (setting, chart, slider)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "explorer-400px.png"), full_page=False)
    # a wider window redraws the chart to its new width
    narrow = page.evaluate("document.getElementById('gantt-canvas').clientWidth")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function(f"document.getElementById('gantt-canvas').clientWidth > {narrow + 200}")
    # at 1280 px the cost fields sit beside the chart (to its right), not above it
    cost, chart = _box(page, "#cost-F"), _box(page, "#gantt-canvas")
    assert cost[3] > chart[2] and cost[0] > chart[0]
    context.close()


def test_labels_contrast_at_least_4_5(page, default_page):
    _open(page, default_page)
    worst = page.evaluate("""() => { const D = ConveyorDraw; let w = 99;
        for (let mb = 0; mb < 64; mb++) for (const fill of [D.strong(mb), D.tint(mb)]) {
          const L = D.rgbLuminance(D.parseHex(fill)), c = D.labelOn(fill);
          w = Math.min(w, D.contrast(L, c === '#000' ? 0 : 1)); }
        return w; }""")
    assert worst >= 4.5


def test_page_is_generic_over_chunks_and_split_backward(page, tmp_path):
    with registered_vshape() as name:
        data = build_data(names=[name, "1f1b"], P_max=4, M_max=6, ratios=(1, 1.5),
                          jobs=1, cache=False)
        path = write_page(tmp_path / "v.html", render_page(
            data, initial={"schedule": name, "P": 3, "M": 4, "view": "step", "ratio": 1.5}))
        _open(page, path)
        c = {"unit": "stage", "F": [1, 2, 1, 1, 1, 1], "I": [0.5], "W": [0.25], "lat": 0.125,
             "bytes": 0, "bw": "inf"}
        js = page.evaluate("st => window.conveyor.timeline(st)", {
            "P": 3, "M": 4, "costs": {"unit": "stage", "F": "1,2,1,1,1,1", "I": "0.5", "W": "0.25",
                                      "lat": "0.125"}})
        assert js is not None, c  # None: the page refused the costs
        assert sorted(js) == sorted(_python_events(name, 3, 4, "step", c))
    assert page.evaluate("window.conveyor.selfCheck()")["n_bad"] == 0
    legend = page.locator("#legend").text_content()
    assert "I input-gradient" in legend and "W weight-gradient" in legend and "later chunk" in legend
    assert "no closed form" in _row(page)[3]


def test_a_refused_configuration_shows_the_generators_reason(page, tmp_path):
    expect = _expect()
    with registered_picky() as name:
        data = build_data(names=[name], P_max=4, M_max=8, ratios=(2,), jobs=1, cache=False)
    path = write_page(tmp_path / "p.html", render_page(
        data, initial={"schedule": name, "P": 4, "M": 8, "view": "step", "ratio": 2}))
    _open(page, path)
    assert len(page.evaluate("window.conveyor.models")) == 1
    page.locator("#M").fill("6")
    expect(page.locator("#summary .refused")).to_have_text(
        "test-picky: test-picky needs M to be a multiple of P (P=4, M=6); use M=8")
    assert page.evaluate("window.conveyor.models.length") == 0


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


def test_served_page_draws_python_orders(page, served):
    expect = _expect()
    requests: list[str] = []
    _open(page, served, requests)
    page.locator("#M").fill("32")
    expect(page.locator("#stats tr").nth(1).locator("td.b")).to_have_text("3/35 = 8.6%")
    assert _row(page)[3] == fraction_text(formula_bubble("gpipe", 4, 32))
    page.select_option("#compare", "1f1b")                   # side by side, both from the server
    expect(page.locator("#stats tr")).to_have_count(3)
    assert _row(page, 1)[0] == "1f1b" and _row(page, 1)[4] == "35"
    assert requests and all(u.startswith("http://127.0.0.1:") for u in requests)
