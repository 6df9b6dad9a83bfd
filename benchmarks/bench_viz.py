"""Redraw time of the explorer page after a slider move, measured in the browser.

Builds the default page (every schedule, P 1..16, M 1..64), opens it from
file:// in headless Debian chromium, sets P = 8 and M = 64 and moves the M
slider back and forth (64 -> 63 -> 64 ...), one ``input`` event at a time, as a
drag does; then, on a fresh load, sweeps M from 2 to 64 so every move shows a
configuration for the first time. For each move it records:

- redraw: ``window.conveyor.lastRedrawMs``, performance.now() around the
  page's redraw (decode, replay, SVG build, DOM update, forced style and
  layout);
- to frame: from the event to two animation frames later, so it includes
  paint and the wait for the next frame (up to ~16 ms of that is vsync).

Run:  PYTHONPATH=. python benchmarks/bench_viz.py [--moves 40] [--out benchmarks/viz_redraw.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conveyor.views.data import build_data  # noqa: E402
from conveyor.views.page import render_page, write_page  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"]

MOVE = """async (m) => {
  const el = document.getElementById("M");
  const t0 = performance.now();
  el.value = m;
  el.dispatchEvent(new Event("input", {bubbles: true}));
  const redraw = window.conveyor.lastRedrawMs;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [redraw, performance.now() - t0];
}"""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).with_name("viz_redraw.md")))
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    t = time.perf_counter()
    built = []
    data = build_data(on_build=lambda: built.append(True))
    build_s = time.perf_counter() - t
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_path = write_page(Path(tmp) / "explorer.html", render_page(data))
        size = page_path.stat().st_size
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        version = browser.version
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_path.as_uri())
        page.evaluate("window.conveyor.ready")
        for sc in data["schedules"]:
            for view in ("fwd", "step"):
                page.evaluate(f"window.conveyor.set({{schedule: '{sc['name']}', P: 8, M: 64, "
                              f"view: '{view}', ratio: 2}})")
                cells = page.locator("#gantt rect").count()
                samples = [page.evaluate(MOVE, 63 if i % 2 == 0 else 64)
                           for i in range(args.moves)]
                redraw = [s[0] for s in samples]
                frame = [s[1] for s in samples]
                rows.append((sc["name"], view, "63 <-> 64", cells, statistics.median(redraw),
                             max(redraw), statistics.median(frame), max(frame)))
                # a sweep over configurations the page has not shown yet (no decoded
                # order to reuse): P = 8, M = 1 .. 64
                page.goto(page_path.as_uri())
                page.evaluate("window.conveyor.ready")
                page.evaluate(f"window.conveyor.set({{schedule: '{sc['name']}', P: 8, M: 1, "
                              f"view: '{view}', ratio: 2}})")
                samples = [page.evaluate(MOVE, m) for m in range(2, 65)]
                redraw = [s[0] for s in samples]
                frame = [s[1] for s in samples]
                rows.append((sc["name"], view, "sweep 2..64", cells, statistics.median(redraw),
                             max(redraw), statistics.median(frame), max(frame)))
        browser.close()

    worst = max(r[5] for r in rows)
    lines = [
        "# Explorer redraw time after a slider move",
        "",
        f"P = 8, B = 2F; M moved 64 -> 63 -> 64 ... ({args.moves} moves), and swept 2..64 "
        f"over configurations not yet shown (nothing decoded to reuse), "
        f"default page ({size / 1e6:.2f} MB). Measured in the browser with performance.now() "
        f"by `benchmarks/bench_viz.py`.",
        "",
        f"- machine: {_cpu()}, {__import__('os').cpu_count()} cores, no GPU; "
        f"headless Chromium {version} (Debian)",
        f"- page data: {'built' if built else 'read from the cache'} in {build_s:.1f} s",
        f"- git: {_git()}",
        "",
        "| schedule | view | M moves | SVG rects at M=64 | redraw median (ms) | redraw max (ms) "
        "| to next frame median (ms) | to next frame max (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, view, moves, cells, rmed, rmax, fmed, fmax in rows:
        lines.append(f"| {name} | {'forward only' if view == 'fwd' else 'training step'} | "
                     f"{moves} | {cells} | {rmed:.1f} | {rmax:.1f} | {fmed:.1f} | {fmax:.1f} |")
    lines += ["", f"Budget: < 100 ms per redraw. Worst redraw seen: {worst:.1f} ms "
                  f"({'within' if worst < 100 else 'OVER'} budget).",
              "", "\"redraw\" is the page's own redraw (decode the order, replay it, build the "
              "SVG, replace the DOM, force style and layout). \"to next frame\" adds paint and "
              "the wait for the next animation frame.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
