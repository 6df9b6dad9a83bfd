"""Take the explorer screenshots in docs/ (headless Debian chromium).

Each is the page in one state, cropped to what the text around it describes
and stored with a 128-colour palette to keep the files small:

- explorer-side-by-side.png  zbv beside 1f1b on the same model, P = 4, M = 8
- explorer-costs.png         1F1B with a slow stage and link latency, its
                             critical path and an idle cell explained
- explorer-400px.png         the page at 400 px: chart, then the M slider
- explorer-measured.png      a measured run: waiting on a peer and transfer
- explorer-steps.png         five recorded steps: the spread and the straggler
- explorer-sweep.png         the demo's measured sweep, one chart per M

    .venv/bin/python -m tests.views.shoot_docs [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE / "data"


def _small(png: Path) -> None:
    from PIL import Image
    img = Image.open(png).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def _shot(page, path: Path, selector: str | None = None, pad: int = 6) -> None:
    if selector is None:
        page.screenshot(path=str(path))
    else:
        box = page.evaluate(f"""() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();
            return [r.left + scrollX, r.top + scrollY, r.width, r.height]; }}""")
        page.screenshot(path=str(path), full_page=True, clip={
            "x": max(0, box[0] - pad), "y": max(0, box[1] - pad), "width": box[2] + 2 * pad,
            "height": box[3] + 2 * pad})
    _small(path)


def shoot(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from conveyor.sim import load_timeline
    from conveyor.views.data import build_data
    from conveyor.views.page import render_page, write_page
    from conveyor.views.steps import steps_section
    from conveyor.views.sweep import sweep_section
    from tests.views.conftest import CHROMIUM, CHROMIUM_ARGS

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".shoot"
    tmp.mkdir(exist_ok=True)
    data = build_data()
    init = {"schedule": "gpipe", "P": 4, "M": 8, "view": "step", "ratio": 2}
    page_path = write_page(tmp / "page.html", render_page(data, initial=init))
    sweep = sweep_section(DATA / "sweep")
    sweep_path = write_page(tmp / "sweep.html", render_page(
        data, sweep=sweep, initial=dict(init, M=16)))
    files = sorted((DATA / "steps").glob("step*.json"))
    steps = steps_section([load_timeline(f) for f in files], files)
    steps_path = write_page(tmp / "steps.html", render_page(
        data, steps=steps, initial=dict(init, schedule="1f1b")))
    m = sweep["runs"][0]
    measured_path = write_page(tmp / "measured.html", render_page(
        data, measured=m, initial=dict(init, M=1)))
    done = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def open_(path, hash_="", width=1280, height=900):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(path.as_uri() + hash_)
            page.evaluate("window.conveyor.ready")
            page.wait_for_timeout(600)   # the curve's points are computed after the redraw
            return page

        page = open_(page_path, "#s=zbv&c=1f1b&P=4&M=8&v=step")
        _shot(page, out / "explorer-side-by-side.png", "#explorer")
        done.append(out / "explorer-side-by-side.png")
        page.goto(page_path.as_uri() + "#s=1f1b&P=4&M=8&v=step&F=1,1,3,1&lat=0.5&cp=1")
        page.evaluate("window.conveyor.ready")
        page.wait_for_timeout(600)
        page.mouse.click(*page.evaluate("window.conveyor.idlePoint(0, 0, 4.6)"))
        _shot(page, out / "explorer-costs.png", ".main")
        done.append(out / "explorer-costs.png")
        page.close()
        page = open_(page_path, "#s=gpipe&c=1f1b&P=4&M=8&v=fwd", width=400, height=800)
        _shot(page, out / "explorer-400px.png")
        done.append(out / "explorer-400px.png")
        page.close()
        page = open_(measured_path)
        page.evaluate("window.conveyor.explainMeasured(window.conveyor.measuredShown().ms.measured"
                      ".pieces.find(p => p[0] === 2 && p[3] === 0 && p[4] >= 0))")
        _shot(page, out / "explorer-measured.png", "#measured")
        done.append(out / "explorer-measured.png")
        page.close()
        page = open_(steps_path)
        _shot(page, out / "explorer-steps.png", "#measured")
        done.append(out / "explorer-steps.png")
        page.close()
        page = open_(sweep_path)
        _shot(page, out / "explorer-sweep.png", "#measured")
        done.append(out / "explorer-sweep.png")
        page.close()
        browser.close()
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return done


if __name__ == "__main__":
    for path in shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "docs"):
        print(path, f"{path.stat().st_size / 1e3:.0f} kB")
