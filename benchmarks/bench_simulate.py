"""How long the simulator takes on a large pipeline (target: 1f1b at
P = 64, M = 1024 under 1 s on a 2-core machine, issue #10; under 2 s before).

    python benchmarks/bench_simulate.py [--repeat 5] [--out benchmarks/simulator.md]

Times generation, validation + simulation, and the metrics (bubble, peak
activations) separately, takes the median of --repeat runs, and writes a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate

CASES = [("1f1b", 64, 1024), ("gpipe", 64, 1024), ("1f1b", 16, 256), ("1f1b", 8, 64)]


def measure(name: str, P: int, M: int, repeat: int) -> dict:
    rows = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        s = build_schedule(name, P, M)
        t1 = time.perf_counter()
        t = simulate(s, CostModel(forward=1, backward=2, latency=0.1))
        t2 = time.perf_counter()
        bubble, peaks = t.bubble_overall, t.peak_activations()
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = [statistics.median(col) for col in zip(*rows)]
    return {"schedule": name, "P": P, "M": M, "actions": len(s), "generate": med[0],
            "simulate": med[1], "metrics": med[2], "total": med[3], "bubble": bubble,
            "peak0": peaks[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("simulator.md")))
    args = ap.parse_args()
    results = [measure(*case, repeat=args.repeat) for case in CASES]
    lines = [
        "# Simulator speed",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}; median of {args.repeat} runs; "
        "`python benchmarks/bench_simulate.py`.",
        "",
        "| schedule | P | M | actions | generate s | validate+simulate s | metrics s | total s "
        "| bubble | peak act. stage 0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['schedule']} | {r['P']} | {r['M']} | {r['actions']} | "
                     f"{r['generate']:.3f} | {r['simulate']:.3f} | {r['metrics']:.3f} | "
                     f"**{r['total']:.3f}** | {r['bubble']:.2%} | {r['peak0']} |")
    target = results[0]["total"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines += ["", f"Target (1f1b, P=64, M=1024, under 1 s): {target:.2f} s, "
                  f"{'met' if target < 1 else 'MISSED'}."
                  + (f" Load average after the runs: {load[0]:.2f} / {load[1]:.2f} / "
                     f"{load[2]:.2f} (2 cores)." if load else ""), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
