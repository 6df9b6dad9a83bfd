"""Time zb-auto and compare its simulated step with the best fixed schedule.

    .venv/bin/python benchmarks/bench_zb_auto.py [--repeats 3] [--out benchmarks/zb_auto.md]

For P in {2, 4, 8, 16} and M in {8, 16, 32, 64}, under costs with the last
stage 1.5x slower and a link latency of half an F (F=1, I=1, W=1 elsewhere),
it records the median wall and CPU time of one zb-auto call (cap P, line placement,
and cap P with the V placement) and the simulated step against the best of
1F1B / ZB-H1 (same cap) and ZBV / DualPipeV (V). The target is < 2 s per
call for P <= 16, M <= 64.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate


def costs(S: int) -> CostModel:
    slow = [1.0] * (S - 1) + [1.5]
    return CostModel(forward=slow, backward=[2 * x for x in slow], input_grad=slow,
                     weight_grad=slow, latency=0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = ["| P | M | placement | zb-auto wall s | zb-auto CPU s | zb-auto step | best fixed "
            "| fixed step |", "|---|---|---|---|---|---|---|---|"]
    worst = worst_cpu = 0.0
    for P in (2, 4, 8, 16):
        for M in (8, 16, 32, 64):
            for place, S, fixed in (("line", P, ("1f1b", "zb-h1")),
                                    ("v", 2 * P, ("zbv", "dualpipev"))):
                cm = costs(S)
                times, cpu = [], []
                for _ in range(args.repeats):
                    c0, t0 = time.process_time(), time.perf_counter()
                    auto = build_schedule("zb-auto", P, M, costs=cm, cap=P if place == "line"
                                          else P + 1, placement=place)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                med = statistics.median(times)
                worst = max(worst, med)
                worst_cpu = max(worst_cpu, statistics.median(cpu))
                steps = {n: simulate(build_schedule(n, P, M), cm).step_time for n in fixed}
                best = min(steps, key=steps.get)
                rows.append(f"| {P} | {M} | {place} | {med:.3f} | {statistics.median(cpu):.3f} | "
                            f"{simulate(auto, cm).step_time:g} | {best} | {steps[best]:g} |")
    load = os.getloadavg()
    rows.append("")
    rows.append(f"slowest median call: {worst:.3f} s wall, {worst_cpu:.3f} s CPU (target < 2 s; "
                f"medians of {args.repeats}); load average at the end "
                f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    text = "\n".join(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
