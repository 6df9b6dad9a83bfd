"""conveyor vs torch.distributed.pipelining: step time, bubble, memory, bytes.

    python benchmarks/bench_pipeline.py                 # the full run (about 14 min here)
    python benchmarks/bench_pipeline.py --quick         # a 2-minute subset
    python benchmarks/bench_pipeline.py --only mlp      # rerun one workload, keep the other
    python benchmarks/bench_pipeline.py --report-only   # RESULTS.md and figures from results.json

Runs both frameworks on the same model, schedule, P, M and batch, in real
processes (one per rank, gloo on CPU), taking turns step by step; medians of
--repeats timed steps. Writes benchmarks/results.json, benchmarks/RESULTS.md
(with each target checked) and PNG figures in benchmarks/figures/. A
hand-written analysis in benchmarks/pipeline_notes.md, if present, is
appended to RESULTS.md.

Workloads: (a) emulated device time (layers that sleep for a set F and B,
P in {2, 4, 8}); (b) a deep MLP doing real compute at P = 2, one thread per
rank, against the same model on one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the harness lives beside this script, not in the package

from harness.config import EmulatedWorkload, MLPWorkload, RunSettings  # noqa: E402
from harness.driver import run_benchmark  # noqa: E402
from harness.figures import write_figures  # noqa: E402
from harness.report import (  # noqa: E402
    RATIO_TARGET, SPEEDUP_TARGET, markdown_breakdown, markdown_conditions, markdown_emulated,
    markdown_mlp, targets_emulated, targets_mlp, text_table,
)

from conveyor.progress import ProgressBar  # noqa: E402
SCHEDULES = ["gpipe", "1f1b"]


def grids(quick: bool) -> dict:
    if quick:
        return {"emulated": dict(Ps=[2, 4], Ms=[4, 8]), "mlp": dict(Ps=[2], Ms=[16])}
    return {"emulated": dict(Ps=[2, 4, 8], Ms=[4, 8, 16, 32]),
            "mlp": dict(Ps=[2], Ms=[4, 8, 16, 32])}


def run(name: str, workload, grid: dict, settings: RunSettings, device: str) -> dict:
    n = len(grid["Ps"]) * len(grid["Ms"]) * len(SCHEDULES)
    bar = ProgressBar(n, title=f"{name:8} ")
    try:
        return run_benchmark(workload=workload, schedules=SCHEDULES, settings=settings,
                             device=device, on_progress=bar.advance, **grid)
    finally:
        bar.close()


def targets_md(results: dict) -> list[str]:
    lines = ["## Targets", ""]
    if "emulated" in results:
        t = targets_emulated(results["emulated"]["rows"])
        for key, what in (("ratio", f"conveyor step <= {RATIO_TARGET} x simulator ideal"),
                          ("vs_torch", "conveyor no slower than torch.distributed.pipelining")):
            items = t[key]
            missed = [(label, v) for label, v, ok in items if not ok]
            worst = max(items, key=lambda x: x[1], default=None)
            lines.append(f"- Emulated, {what}: **{len(items) - len(missed)}/{len(items)} met**"
                         + (f"; worst {worst[0]} at {worst[1]:.3f}" if worst else "") + ".")
            if missed:
                lines.append("  Missed: " + ", ".join(f"{lb} ({v:.3f}, over by "
                                                       f"{100 * (v / (RATIO_TARGET if key == 'ratio' else 1) - 1):.1f}%)"
                                                       for lb, v in missed) + ".")
        mem = t["memory"]
        bad = [(lb, h, lim) for lb, h, ok, lim in mem if not ok]
        lines.append(f"- Memory (1F1B holds <= min(P, M) on stage 0, GPipe holds M), as "
                     f"measured: **{len(mem) - len(bad)}/{len(mem)} met**"
                     + ("." if not bad else "; missed: " + ", ".join(
                         f"{lb} held {h} (bound {lim})" for lb, h, lim in bad) + "."))
    if "mlp" in results:
        items = targets_mlp(results["mlp"]["rows"])
        lines.append(f"- Real compute, speedup >= {SPEEDUP_TARGET} x P·M/(M+P-1): "
                     + "; ".join(f"{lb}: {s:.2f} vs {SPEEDUP_TARGET * i:.2f} "
                                 f"{'met' if ok else f'**missed by {100 * (1 - s / (SPEEDUP_TARGET * i)):.1f}%**'}"
                                 for lb, s, i, ok in items) + ".")
    return lines + [""]


def write_markdown(results: dict, out: Path, notes: Path | None, cmd: str) -> None:
    lines = ["# Pipeline benchmarks: conveyor vs torch.distributed.pipelining", "",
             f"Written by `{cmd}`; raw numbers in `results.json`. Times are medians of the "
             "timed steps; each step runs from a barrier to the last rank's optimizer update. "
             "Bubble and activations held come from the same probe on both frameworks "
             "(stamps at each stage's forward and backward). Bytes are counted at "
             "`torch.distributed`'s point-to-point sends. n/s: the framework does not support "
             "the case.", ""]
    lines += targets_md(results)
    if "emulated" in results:
        r = results["emulated"]
        lines += ["## (a) Emulated device time", "", markdown_conditions(r["meta"]), "",
                  "Ideal: conveyor's simulator with the configured F and B per stage and free "
                  "links.", ""]
        lines += markdown_emulated(r["rows"]) + [""]
        lines += ["### Where the time beyond the ideal went (ms)", "",
                  "overrun: re-simulated with each stage's F and B as measured in the run; "
                  "latency: adding the one-way link latency measured before the case; "
                  "residual: the rest, the framework's own cost between actions.", ""]
        lines += markdown_breakdown(r["rows"]) + [
            "", "![step time](figures/emulated_step_time.png)",
            "![bubble](figures/emulated_bubble.png)",
            "![memory](figures/emulated_memory.png)",
            "![rss](figures/emulated_rss.png)", ""]
    if "mlp" in results:
        r = results["mlp"]
        lines += ["## (b) Real compute: deep MLP", "", markdown_conditions(r["meta"]), "",
                  "Ideal: conveyor's simulator with per-stage F and B measured on one "
                  "micro-batch, each stage alone on rank 0 (one thread) right after the "
                  "case's timed steps, free links. One process: the unsplit model on rank 0 "
                  "(one thread, whole batch), timed in turns with the two pipelines while "
                  "the other rank waits.", ""]
        lines += markdown_mlp(r) + [
            "", "CPU share: CPU seconds the ranks used over the wall time of their compute; "
            "near 1 when each rank had a core to itself, lower when other processes took "
            "cores away (compare the in-run F/B simulation with the ideal).", "",
            "![step time](figures/mlp_step_time.png)", ""]
    if notes is not None and notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    out.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (about 2 minutes)")
    ap.add_argument("--only", choices=["emulated", "mlp"], help="run one workload")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed steps per framework, emulated workload (5)")
    ap.add_argument("--mlp-repeats", type=int, default=7,
                    help="timed steps per framework, real compute, whose step times "
                         "vary more on a shared machine (7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    ap.add_argument("--forward", type=float, default=0.02, help="emulated F seconds (0.02)")
    ap.add_argument("--backward", type=float, default=0.04, help="emulated B seconds (0.04)")
    ap.add_argument("--frameworks", default="conveyor,torch",
                    help="comma-separated subset of conveyor,torch (both)")
    ap.add_argument("--Ps", help="stage counts of the emulated grid, comma-separated "
                                 "(default 2,4,8; --quick 2,4)")
    ap.add_argument("--Ms", help="micro-batch counts of both grids, comma-separated "
                                 "(default 4,8,16,32)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: NCCL, one GPU per rank (cpu)")
    ap.add_argument("--out-dir", default=str(HERE), help="where results and figures go")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite RESULTS.md and the figures from results.json, run nothing")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        for name in ("emulated", "mlp"):
            if name in results:
                write_figures(results[name]["rows"], out / "figures", prefix=name)
        write_markdown(results, out / "RESULTS.md", HERE / "pipeline_notes.md",
                       results.get("command", "python benchmarks/bench_pipeline.py"))
        return 0
    settings = RunSettings(repeats=args.repeats, warmup=args.warmup,
                           frameworks=tuple(f for f in args.frameworks.split(",") if f))
    workloads = {"emulated": EmulatedWorkload(forward=args.forward, backward=args.backward),
                 "mlp": MLPWorkload()}
    t0 = time.monotonic()
    results = {}
    previous = out / "results.json"
    if args.only and previous.exists():
        # Rerunning one workload keeps the other's last results in the files.
        results = {k: v for k, v in json.loads(previous.read_text()).items()
                   if k in ("emulated", "mlp") and k != args.only}
    for name, grid in grids(args.quick).items():
        if args.only and name != args.only:
            continue
        if args.Ps and name == "emulated":
            grid["Ps"] = [int(x) for x in args.Ps.split(",")]
        if args.Ms:
            grid["Ms"] = [int(x) for x in args.Ms.split(",")]
        if name == "mlp":
            # The memory targets concern the emulated grid; skip the MLP's RSS run.
            settings = dataclasses.replace(settings, repeats=args.mlp_repeats, memory=False)
        results[name] = run(name, workloads[name], grid, settings, args.device)
        print(text_table(results[name]["rows"]), file=sys.stderr)
        write_figures(results[name]["rows"], out / "figures", prefix=name)
    results["elapsed_s"] = time.monotonic() - t0  # of this invocation
    cmd = "python benchmarks/bench_pipeline.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    results["command"] = cmd.strip()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "RESULTS.md", HERE / "pipeline_notes.md", cmd.strip())
    print(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and figures in "
          f"{out / 'figures'} ({results['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
