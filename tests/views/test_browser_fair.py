"""The explorer's comparisons in headless Chromium: the same model for every
schedule, memory on one scale and in one unit, costs that keep the last valid
chart, zb-auto solved in the page as Python solves it, and work colours that
stand apart from the bubble in the drawn pixels."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest

from conveyor.schedule import build_schedule
from conveyor.schedule.auto import zb_auto
from conveyor.sim import CostModel, simulate

from tests.views.helpers import stage_values
from tests.views.test_browser import _cost_model, _expect, _open, _row, _typed

pytestmark = pytest.mark.browser
NS = "{http://www.w3.org/2000/svg}"


def test_v_schedules_are_compared_on_the_same_model(page, default_page, tmp_path):
    # P = 4, M = 8, F = I = W = 1 per P-th of the model: zbv's 8 chunks each
    # hold half a P-th, so they cost half, and zbv is the shorter step.
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'zbv', compare: '1f1b', P: 4, M: 8, view: 'step', "
                  "costs: {unit: 'model', F: '1', I: '1', W: '1', lat: '0', bytes: '0', bw: 'inf'}})")
    zbv, ofob = _row(page, 0), _row(page, 1)
    t_zbv = simulate(build_schedule("zbv", 4, 8),
                     CostModel(forward=0.5, backward=1, input_grad=0.5, weight_grad=0.5)).step_time
    t_1f1b = simulate(build_schedule("1f1b", 4, 8), CostModel(forward=1, backward=2)).step_time
    assert (zbv[0], zbv[4]) == ("zbv", f"{t_zbv:g}") and (ofob[0], ofob[4]) == ("1f1b", f"{t_1f1b:g}")
    assert float(zbv[4]) < float(ofob[4])
    # memory in one unit: a chunk holds half a micro-batch-equivalent
    assert zbv[6] == "4 · 4 · 4 · 4" and ofob[6] == "4 · 3 · 2 · 1"
    assert zbv[7].startswith("F 0.5 ×8") and ofob[7].startswith("F 1 ×4")
    # interleaved-1f1b too (its step at the same model is 1f1b's with a smaller fill)
    page.evaluate("window.conveyor.set({schedule: 'interleaved-1f1b'})")
    t_int = simulate(build_schedule("interleaved-1f1b", 4, 8),
                     CostModel(forward=0.5, backward=1)).step_time
    assert _row(page, 0)[4] == f"{t_int:g}" and t_int < t_1f1b
    # "per stage" is the old reading: a V schedule then models a model twice as big
    page.evaluate("window.conveyor.set({schedule: 'zbv', costs: {unit: 'stage'}})")
    assert float(_row(page, 0)[4]) > float(_row(page, 1)[4])


def test_per_layer_costs_give_each_stage_its_layers(page, default_page):
    _open(page, default_page)
    layers = [1, 1, 1, 2, 1, 1, 3, 1]
    page.evaluate("st => window.conveyor.set(st)", {
        "schedule": "zbv", "compare": "1f1b", "P": 4, "M": 8, "view": "step",
        "costs": {"unit": "layer", "F": ",".join(map(str, layers)), "I": "1", "W": "1", "lat": "0",
                  "bytes": "0", "bw": "inf"}})
    for i, name in enumerate(["zbv", "1f1b"]):
        sched = build_schedule(name, 4, 8)
        f = stage_values(layers, sched.S, 4, "layer")
        i_w = stage_values([1] * len(layers), sched.S, 4, "layer")   # one value: every layer
        tl = simulate(sched, CostModel(forward=f, backward=[2 * x for x in i_w], input_grad=i_w,
                                       weight_grad=i_w))
        assert _row(page, i)[4] == f"{tl.step_time:g}", name


def _lane_heights(svg: str) -> list[list[float]]:
    """Per drawn memory lane polygon (panel order, then rank), its height in px."""
    out = []
    for e in ET.fromstring(svg).iter(NS + "path"):
        if e.get("fill") != "rgba(60,80,140,0.45)":
            continue
        ys = [float(y) for y in re.findall(r"[ML][\d.]+ ([\d.]+)", e.get("d"))]
        out.append(max(ys) - min(ys))
    return out


def test_memory_lanes_share_one_scale(page, default_page, tmp_path):
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'gpipe', compare: '1f1b', P: 4, M: 8, "
                  "view: 'step', ratio: 2})")
    heights = _lane_heights(page.evaluate("window.conveyor.svgText()"))
    assert len(heights) == 8
    gpipe, ofob = heights[:4], heights[4:]
    # GPipe holds 8 on every rank, 1F1B 4, 3, 2, 1: one scale for both charts
    assert max(gpipe) == pytest.approx(min(gpipe))
    assert [h / gpipe[0] for h in ofob] == pytest.approx([4 / 8, 3 / 8, 2 / 8, 1 / 8], abs=0.02)
    page.evaluate("window.conveyor.set({schedule: 'naive', compare: '1f1b'})")
    svg = page.evaluate("window.conveyor.svgText()")
    texts = [t.text or "" for t in ET.fromstring(svg).iter(NS + "text")]
    assert [t for t in texts if t.startswith("r0:")] == ["r0: 8", "r0: 4"]  # naive's lane = its table
    assert "s0 F0" in texts and "s3 B0" in texts             # cells with room say stage, kind, mb
    assert _row(page, 0)[6] == "8 · 8 · 8 · 8"
    page.locator("#cost-mem").fill("1000000")               # bytes when the sizes are given
    _expect()(page.locator("#stats tr").nth(1).locator("td").nth(5)).to_contain_text("(max 8 MB)")


def test_invalid_costs_keep_the_last_valid_chart_and_mark_the_field(page, default_page):
    expect = _expect()
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: 'zbv', compare: '1f1b', P: 4, M: 8, view: 'step', "
                  "costs: {unit: 'stage', F: '1', I: '1', W: '1', lat: '0', bytes: '0', bw: 'inf'}})")
    before = page.evaluate("document.getElementById('gantt-canvas').toDataURL()")
    rows = [_row(page, 0), _row(page, 1)]
    page.locator("#cost-F").fill("1,1,2,1")                  # 4 values, zbv has 8 stages
    expect(page.locator("#cost-error")).to_contain_text(
        "zbv: F has 4 values but this schedule has 8 stages")
    expect(page.locator("#cost-error")).to_contain_text("the chart keeps the last valid costs")
    expect(page.locator("#cost-F")).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("document.getElementById('gantt-canvas').toDataURL()") == before
    assert [_row(page, 0), _row(page, 1)] == rows
    # the hint's reading, per P-th of the model, takes the same four values for both
    page.select_option("#cost-unit", "model")
    expect(page.locator("#cost-error")).to_be_hidden()
    assert page.locator("#cost-F").get_attribute("aria-invalid") is None
    assert _row(page, 0)[7].startswith("F 0.5, 0.5, 0.5, 0.5, 1, 1, 0.5, 0.5")
    page.locator("#cost-lat").fill("-1")                     # a value that is no cost at all
    expect(page.locator("#cost-lat")).to_have_class("invalid")
    assert _row(page, 0)[7].startswith("F 0.5, 0.5, 0.5, 0.5, 1, 1, 0.5, 0.5")


def test_zb_auto_is_solved_in_the_page_as_python_solves_it(page, default_page):
    _open(page, default_page)
    rng = random.Random(7)
    for k in range(12):
        P, M = rng.randint(1, 8), rng.randint(1, 24)
        c = {"unit": "model", "F": [round(rng.uniform(0.3, 2), 2) for _ in range(rng.choice([1, P]))],
             "I": [round(rng.uniform(0.3, 2), 2) for _ in range(rng.choice([1, P]))],
             "W": [round(rng.uniform(0, 1.5), 2) for _ in range(rng.choice([1, P]))],
             "lat": rng.choice([0, 0.5, 2, round(rng.uniform(0, 1), 3)]),
             "bytes": rng.choice([0, 1000]), "bw": rng.choice(["inf", 4000])}
        page.evaluate("st => window.conveyor.set(st)", {
            "schedule": "zb-auto", "compare": "", "P": P, "M": M, "view": "step", "costs": _typed(c)})
        js = page.evaluate("window.conveyor.solvedOrder()")
        py = zb_auto(P, M, costs=_cost_model(P, P, c))
        assert js == [[str(a) for a in row] for row in py.actions], (P, M, c)
    # the case: link latency 2 gives a step of 51 (57 with the order of the default costs)
    page.evaluate("window.conveyor.set({schedule: 'zb-auto', compare: '', P: 4, M: 8, view: 'step', "
                  "ratio: 2, costs: {lat: '2'}})")
    c = CostModel(forward=1, backward=2, latency=2)
    assert _row(page, 0)[4] == f"{simulate(zb_auto(4, 8, costs=c), c).step_time:g}"


def test_work_colours_stand_apart_from_the_bubble_in_the_drawn_pixels(page, default_page):
    # Every micro-batch colour of F, B, I and W, read back from the canvas at
    # its cells' centres, against every pixel of the drawn bubble: >= 3:1.
    _open(page, default_page)
    worst = []
    for name in ("gpipe", "zb-h1"):
        page.evaluate(f"window.conveyor.set({{schedule: '{name}', compare: '', P: 4, M: 64, "
                      f"view: 'step', ratio: 2}})")
        worst.append(page.evaluate("""() => {
          const D = ConveyorDraw, cur = window.conveyor.current(), canvas = document.getElementById('gantt-canvas');
          const dpr = devicePixelRatio, ctx = canvas.getContext('2d');
          const px = (x, y) => Array.from(ctx.getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1).data);
          const lum = c => D.rgbLuminance(c);
          const work = new Map(), bubble = new Map();
          for (const h of cur.hits) {
            if (h.event) { const c = px(h.x + h.w / 2, h.y + h.h / 2); work.set(c.join(), c); }
            else if (!h.idle[3]) for (let x = h.x + 1; x < h.x + h.w - 1; x += 1)
              for (let y = h.y + 4; y < h.y + h.h - 4; y += 1) { const c = px(x, y); bubble.set(c.join(), c); }
          }
          let w = 99;
          for (const a of work.values()) for (const b of bubble.values()) w = Math.min(w, D.contrast(lum(a), lum(b)));
          return [w, work.size, bubble.size];
        }"""))
    for contrast, n_work, n_bubble in worst:
        assert n_work >= 64 and n_bubble >= 2          # every micro-batch's colour was read
        assert contrast >= 3.0, worst


def test_a_per_cut_list_that_fits_one_schedule_only_keeps_the_chart(page, default_page):
    expect = _expect()
    _open(page, default_page)
    page.evaluate("window.conveyor.set({schedule: '1f1b', compare: 'zbv', P: 4, M: 8, view: 'step', "
                  "ratio: 2, costs: {bytes: '100,200,100', bw: '1000'}})")   # 3 cuts: 1f1b's
    expect(page.locator("#cost-error")).to_contain_text(
        "zbv: activation bytes has 3 values but this schedule has 7 cuts between its 8 stages")
    expect(page.locator("#cost-bytes")).to_have_attribute("aria-invalid", "true")
