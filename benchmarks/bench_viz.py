"""Redraw time of the explorer page after a slider move, measured in the browser.

Builds the default page (every schedule, P 1..16, M 1..64), opens it from
file:// in headless Debian chromium, and for P = 8 and P = 16, each schedule
alone and gpipe beside 1f1b, in both views, sets M = 64 and moves the M slider
back and forth (64 -> 63 -> 64 ...), one ``input`` event at a time, as a drag
does; then, on a fresh load, sweeps M from 2 to 64 so every move shows a
configuration for the first time. For each move it records:

- redraw: ``window.conveyor.lastRedrawMs``, performance.now() around the
  page's redraw (decode, replay under the typed costs, canvas drawing of the
  chart, memory strips and bubble-vs-M curve, table, forced style and layout);
- to frame: from the event to two animation frames later, so it includes
  paint and the wait for the next frame (up to ~16 ms of that is vsync).

Run:  PYTHONPATH=. python benchmarks/bench_viz.py [--moves 40] [--out benchmarks/viz_redraw.md]
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--moves", type=int, default=30)
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
        cases = [(sc["name"], "") for sc in data["schedules"]] + [("gpipe", "1f1b")]
        for P in (8, 16):
            for name, other in cases:
                for view in ("fwd", "step"):
                    setting = (f"{{schedule: '{name}', compare: '{other}', P: {P}, M: %d, "
                               f"view: '{view}', ratio: 2}}")
                    page.evaluate(f"window.conveyor.set({setting % 64})")
                    samples = [page.evaluate(MOVE, 63 if i % 2 == 0 else 64)
                               for i in range(args.moves)]
                    label = name + (f" beside {other}" if other else "")
                    rows.append((P, label, view, "63 <-> 64", *_stats(samples)))
                    # configurations the page has not shown yet (no decoded order to reuse)
                    page.goto(page_path.as_uri())
                    page.evaluate("window.conveyor.ready")
                    page.evaluate(f"window.conveyor.set({setting % 1})")
                    samples = [page.evaluate(MOVE, m) for m in range(2, 65)]
                    rows.append((P, label, view, "sweep 2..64", *_stats(samples)))
        browser.close()

    step16 = [r for r in rows if r[0] == 16 and r[2] == "step"]
    worst = max(r[4] for r in step16)
    load = os.getloadavg()
    lines = [
        "# Explorer redraw time after a slider move",
        "",
        f"B = 2F; M moved 64 -> 63 -> 64 ... ({args.moves} moves), and swept 2..64 over "
        f"configurations not yet shown (nothing decoded to reuse); default page "
        f"({size / 1e6:.2f} MB), window 1280 px wide. Measured in the browser with "
        f"performance.now() by `benchmarks/bench_viz.py` (one command reruns it).",
        "",
        f"- machine: {_cpu()}, {os.cpu_count()} cores, no GPU; headless Chromium {version} "
        f"(Debian)",
        f"- load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"(the machine was shared with other jobs: rerun on a quiet machine)",
        f"- page data: {'built' if built else 'read from the cache'} in {build_s:.1f} s",
        f"- git: {_git()}",
        "",
        "| P | schedule | view | M moves | redraw median (ms) | redraw max (ms) "
        "| to next frame median (ms) | to next frame max (ms) |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for P, name, view, moves, rmed, rmax, fmed, fmax in rows:
        lines.append(f"| {P} | {name} | {'forward only' if view == 'fwd' else 'training step'} | "
                     f"{moves} | {rmed:.1f} | {rmax:.1f} | {fmed:.1f} | {fmax:.1f} |")
    lines += ["", f"Target: the worst median redraw at P = 16, M = 64 in the training-step view "
                  f"< 50 ms. Worst median seen: {worst:.1f} ms "
                  f"({'met' if worst < 50 else 'MISSED'}).",
              "", "\"redraw\" is the page's own redraw (decode the order, replay it under the "
              "costs, draw the canvas, update the table, force style and layout). \"to next "
              "frame\" adds paint and the wait for the next animation frame (vsync, up to "
              "~16 ms).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _stats(samples: list) -> tuple[float, float, float, float]:
    redraw, frame = [s[0] for s in samples], [s[1] for s in samples]
    return statistics.median(redraw), max(redraw), statistics.median(frame), max(frame)


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
