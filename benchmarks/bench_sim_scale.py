"""The simulator and planner at scale (issue 12, item 6), and the predicted
saving of the overlapped data-parallel all-reduce.

    .venv/bin/python benchmarks/bench_sim_scale.py [--runs 3] [--baseline 584be4e] [--out FILE]

(default FILE: benchmarks/sim_scale.md; about 10 minutes on a loaded 2-core machine)

1. Simulator wall time for P in {8, 32, 64, 128}, M in {512, 4096}, four
   schedules, with dp = 64 replicas on nodes of 8 ranks (the all-reduces
   included): building the schedule, validating + simulating it, and the
   metrics (step time, bubble, peak activations). Median of --runs runs.
2. The same for the simulator at git revision --baseline (before this work),
   in a subprocess on a copy of that revision, for a few cases (its cell
   bound is raised there to let P = 128, M = 4096 through).
3. The planner (``conveyor.plan.search``) on a synthetic profile with dp = 8
   on two nodes: wall time, median of --runs.
4. Predicted saving of the overlap (all-reduce from each stage's last
   backward vs after the rank's whole backward): the dp helper's emulated
   benchmark configuration (benchmarks/bench_dp_overlap.py), and a realistic
   two-node case (P = 8, M = 32, dp = 8, a 7B-class model's gradients).

Every figure depends on the machine's load: the file states the load average
before and after. Rerun on a quiet machine for clean figures. A "## Notes"
section at the end of the file, written by hand, is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conveyor.schedule import build_schedule  # noqa: E402
from conveyor.sim import CostModel, simulate  # noqa: E402

SCHEDULES = ["1f1b", "interleaved-1f1b", "zb-h1", "zbv"]
PS, MS = [8, 32, 64, 128], [512, 4096]
DP, PER_NODE = 64, 8
BASELINE_CASES = [("1f1b", 64, 1024), ("1f1b", 128, 4096), ("zb-h1", 128, 4096)]

# Run in a subprocess against either tree: times one (schedule, P, M) case.
_MEASURE = r"""
import json, statistics, sys, time
import conveyor.limits as limits
limits.MAX_CELLS = max(limits.MAX_CELLS, 2 ** 19)
from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate
name, P, M, runs, dp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
kw = dict(forward=1.0, backward=2.0, latency=0.05)
if dp > 1:
    kw.update(dp=dp, ranks_per_node=%d, inter_latency=0.1, inter_bandwidth=25.0,
              param_bytes=100.0, bandwidth=100.0)
rows = []
for _ in range(runs):
    c0, t0 = time.process_time(), time.perf_counter()
    s = build_schedule(name, P, M)
    t1 = time.perf_counter()
    tl = simulate(s, CostModel(**kw))
    t2 = time.perf_counter()
    tl.step_time, tl.bubble_overall, tl.peak_activations()
    t3, c3 = time.perf_counter(), time.process_time()
    rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0, c3 - c0))
    del s, tl  # the next run starts from the same memory
med = [statistics.median(c) for c in zip(*rows)]
s = build_schedule(name, P, M)
tl = simulate(s, CostModel(**kw))
print(json.dumps({"actions": len(s), "build": med[0], "simulate": med[1], "metrics": med[2],
                  "total": med[3], "cpu": med[4], "step": tl.step_time,
                  "bubble": tl.bubble_overall}))
""" % PER_NODE


def load() -> str:
    return "%.2f" % os.getloadavg()[0]


def measure(tree: Path, name: str, P: int, M: int, runs: int, dp: int) -> dict:
    """One case in a fresh interpreter on ``tree`` (a conveyor checkout)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _MEASURE, name, str(P), str(M), str(runs),
                          str(dp)], capture_output=True, text=True, env=env, cwd=tree,
                         check=True)
    return json.loads(out.stdout)


def speed_table(runs: int) -> list[str]:
    lines = ["| schedule | P | M | actions | build s | validate+simulate s | metrics s | "
             "**total s** | CPU s | bubble |", "|---|---|---|---|---|---|---|---|---|---|"]
    for P in PS:
        for M in MS:
            for name in SCHEDULES:
                r = measure(ROOT, name, P, M, runs, DP)
                lines.append(f"| {name} | {P} | {M} | {r['actions']:,} | {r['build']:.2f} | "
                             f"{r['simulate']:.2f} | {r['metrics']:.2f} | **{r['total']:.2f}** | "
                             f"{r['cpu']:.2f} | {r['bubble']:.1%} |")
                print(lines[-1], flush=True)
    return lines


def baseline_table(rev: str, runs: int) -> list[str]:
    lines = ["| schedule | P | M | dp | before: wall (CPU) s | now: wall (CPU) s | speed-up (CPU) |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "conveyor"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for name, P, M in BASELINE_CASES:
            old = measure(Path(tmp), name, P, M, runs, 1)
            new = measure(ROOT, name, P, M, runs, 1)
            lines.append(f"| {name} | {P} | {M} | 1 | {old['total']:.2f} ({old['cpu']:.2f}) | "
                         f"{new['total']:.2f} ({new['cpu']:.2f}) | {old['cpu'] / new['cpu']:.1f}x |")
            print(lines[-1], flush=True)
            assert old["step"] == new["step"] and old["bubble"] == new["bubble"], (old, new)
    return lines


def planner_table(runs: int) -> list[str]:
    from conveyor.plan import search
    from tests.plan._profiles import synthetic

    lines = ["| P | layers | batch | M tried | schedules | dp x nodes | wall s | best | step |",
             "|---|---|---|---|---|---|---|---|---|"]
    # The largest row is the corner: P = 128, M = 4096, dp = 64.
    for P, batch, Ms, names, dp in [(8, 256, [64, 256], ["1f1b", "zb-h1"], 8),
                                    (32, 1024, [256, 1024], ["1f1b", "zb-h1"], 8),
                                    (128, 512, [512], ["1f1b"], 8),
                                    (128, 4096, [4096], ["1f1b"], 64)]:
        prof = synthetic([1] * (2 * P), params=50_000_000)
        nodes = 2 if dp == 8 else P * dp // 8  # dp 64: 8 ranks (GPUs) per node
        cluster = dict(dp=dp, ranks_per_node=P * dp // nodes, inter_bandwidth=25e9,
                       inter_latency=1e-5)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            res = search(prof, P=P, batch_size=batch, schedules=names, microbatches=Ms,
                         chunks=(1,), refine=False, cluster=cluster)
            times.append(time.perf_counter() - t)
        b = res.best
        lines.append(f"| {P} | {2 * P} | {batch} | {Ms} | {', '.join(names)} | {dp} x {nodes} | "
                     f"{statistics.median(times):.2f} | {b.name} M={b.M} | {b.step * 1e3:.1f} ms |")
        print(lines[-1], flush=True)
    return lines


def _saving(name: str, P: int, M: int, costs: CostModel) -> tuple[float, float, float]:
    tl = simulate(build_schedule(name, P, M), costs, unit="s")
    info = tl.meta["allreduce"]
    return info["end_overlapped"], info["end_after_step"], max(
        sum(c.end - c.start for c in tl.collectives if c.rank == r) for r in range(P))


def overlap_table() -> list[str]:
    lines = ["| case | schedule | all-reduce per rank (ms) | overlap on: step (ms) | "
             "overlap off: step (ms) | predicted saving |", "|---|---|---|---|---|---|"]
    # (a) bench_dp_overlap.py: dp 2 x pp 2, M = 8, 20/40 ms per micro-batch per rank
    # (split over its chunks), 128 MiB of float32 gradient per rank (split over its
    # stages), at the bandwidth its measured one-bucket all-reduce gives (115.4 ms
    # for 128 MiB between two replicas: 2(dp-1)/dp x bytes / time).
    bw = 1.0 * 128 * 2 ** 20 / 0.1154
    for name, v in [("1f1b", 1), ("interleaved-1f1b", 2), ("zbv", 2)]:
        costs = CostModel(forward=0.020 / v, backward=0.040 / v, dp=2,
                          param_bytes=128 * 2 ** 20 / v, bandwidth=bw)
        on, off, ar = _saving(name, 2, 8, costs)
        lines.append(f"| dp 2 x pp 2, emulated (bench_dp_overlap.py) | {name} | {ar * 1e3:.1f} | "
                     f"{on * 1e3:.1f} | {off * 1e3:.1f} | {(off - on) * 1e3:.1f} ms "
                     f"({(off - on) / off:.1%}) |")
    # (b) two nodes of 32 GPUs: P = 8 (a replica inside a node), dp = 8 (rings
    # across both nodes). A 7B-class model in bf16: 1.6 GB of gradient per stage,
    # plus the embedding (0.27 GB) on the first and the head (0.27 GB) on the
    # last; F = 20 ms, B = 40 ms per micro-batch per stage (split over chunks);
    # 32 MiB activations; 150 GB/s, 5 us inside a node, 25 GB/s, 10 us between.
    for name, v in [("1f1b", 1), ("interleaved-1f1b", 2), ("zbv", 2)]:
        S = 8 * v
        params = [1.6e9 / v] * S
        first, last = 0, (S - 1 if name != "zbv" else 0)  # zbv: the V puts both ends on rank 0
        params[first] += 0.27e9
        params[last] += 0.27e9
        costs = CostModel(forward=0.020 / v, backward=0.040 / v, latency=5e-6, bandwidth=150e9,
                          activation_bytes=32 * 2 ** 20, dp=8, ranks_per_node=32,
                          inter_latency=1e-5, inter_bandwidth=25e9, param_bytes=params)
        on, off, ar = _saving(name, 8, 32, costs)
        lines.append(f"| P 8 x dp 8 on 2 nodes, 7B-class | {name} | {ar * 1e3:.1f} | "
                     f"{on * 1e3:.1f} | {off * 1e3:.1f} | {(off - on) * 1e3:.1f} ms "
                     f"({(off - on) / off:.1%}) |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", default="584be4e", help="git revision to compare with ('' skips)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("sim_scale.md")))
    args = ap.parse_args()
    before, t0 = load(), time.perf_counter()
    speed = speed_table(args.runs)
    base = baseline_table(args.baseline, args.runs) if args.baseline else []
    plan = planner_table(args.runs)
    overlap = overlap_table()
    after, wall = load(), time.perf_counter() - t0
    head = [
        "# Simulating at scale",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_sim_scale.py --runs {args.runs}` "
        f"({wall:.0f} s).",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, CPython "
        f"{platform.python_version()}, shared with three other sessions' builds and tests "
        f"while this ran. Load average (1 min) before: {before}, after: {after}. Rerun on a "
        f"quiet machine for clean figures.",
        "",
        f"## Simulator wall time, dp = {DP} on nodes of {PER_NODE} ranks",
        "",
        "Median of %d runs, each in a fresh interpreter's loop: build the schedule, "
        "validate and simulate it (one replica plus every rank's ring all-reduce), then the "
        "metrics (step time, bubble, peak activations). Costs F = 1, B = 2, links 0.05 "
        "within a node, all-reduce rings across nodes. CPU: the process's CPU time for "
        "the same work, which the machine's load distorts less than the wall time." % args.runs,
        "",
    ]
    text = head + speed
    if base:
        text += ["", f"## Against the simulator before this work (revision {args.baseline})",
                 "", "Same measurement (total: build + validate/simulate + metrics), dp = 1 "
                 "(the old simulator has no DP), the same cases in turn; the step time and "
                 "bubble are checked equal.", ""] + base
    text += ["", "## Planner", "", "`conveyor.plan.search` on a synthetic profile (2P equal "
             "layers, 50 MB of parameters each), the schedules named, chunks 1, no "
             "refinement, dp = 8 over two nodes: every simulated candidate includes the "
             f"all-reduce. Median of {args.runs} runs.", ""] + plan
    text += ["", "## Predicted saving of the overlapped all-reduce", "",
             "Overlap on: each stage's all-reduce starts when its last backward on the rank "
             "ends; off: after the rank's whole backward. The simulator prices the ring "
             "with no contention with the pipeline's transfers (see docs/scale.md).", ""]
    text += overlap + [""]
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if "\n## Notes" in old:  # the hand-written reading of the figures stays
        text += [old[old.index("\n## Notes") + 1:].rstrip("\n"), ""]
    out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
