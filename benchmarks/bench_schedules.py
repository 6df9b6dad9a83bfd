"""Every schedule of conveyor and of torch.distributed.pipelining, in turns.

    python benchmarks/bench_schedules.py            # the full grid (see README for its time)
    python benchmarks/bench_schedules.py --quick    # P in {2, 4}, M in {4, 8}
    python benchmarks/bench_schedules.py --smoke --out-dir /tmp/s   # a tiny grid, seconds
    python benchmarks/bench_schedules.py --report-only              # SCHEDULES.md from JSON
    python benchmarks/bench_schedules.py --short        # issue 32: actions of a few ms
    python benchmarks/bench_schedules.py --breakdown    # issue 32: overhead by source

The emulated workload with its backward split into I and W sleeps (I = W =
B / 2 by default), so zero-bubble schedules gain what they would on a GPU. The
schedules are every name in conveyor's registry (read at run time, so new
generators join without an edit here) and every torch.distributed.pipelining
schedule (``harness.frameworks.TORCH_SCHEDULES``); where both have a name,
both run it, in turns, on the same model copies. Writes ``schedules.json`` and
``SCHEDULES.md`` (targets, then a table per P and M) into --out-dir.

``--short`` and ``--breakdown`` (issue 32, ``harness.short``) time 1F1B, GPipe
and interleaved 1F1B with actions of a few milliseconds (16 emulated layers,
0.5 and 2 ms forward per layer), and conveyor's 1F1B with each source of
per-step overhead switched off; they write ``schedules_short.json`` and
``overhead.json``, which SCHEDULES.md shows in a section of its own (with
``*_before.json`` beside them, the same cases before issue 32's changes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the harness lives beside this script, not in the package

from harness.config import EmulatedWorkload, RunSettings  # noqa: E402
from harness.driver import run_benchmark  # noqa: E402
from harness.frameworks import TORCH_SCHEDULES  # noqa: E402
from harness.report import RATIO_TARGET, markdown_conditions  # noqa: E402
from harness import short  # noqa: E402
from harness.schedules_report import (  # noqa: E402
    HEADLINE_TARGET, VS_TORCH_MEDIAN_P8, VS_TORCH_TARGET, headline, markdown_schedules,
    targets_schedules,
)

from conveyor.progress import ProgressBar  # noqa: E402
from conveyor.schedule import schedule_names  # noqa: E402


def all_schedules() -> list[str]:
    """conveyor's registry, then torch's schedules that conveyor lacks."""
    ours = schedule_names()
    return ours + [s for s in TORCH_SCHEDULES if s not in ours]


def grid(args) -> tuple[list[int], list[int]]:
    if args.smoke:
        return [2], [4]
    Ps, Ms = ([2, 4], [4, 8]) if args.quick else ([2, 4, 8], [4, 8, 16, 32])
    if args.Ps:
        Ps = [int(x) for x in args.Ps.split(",")]
    if args.Ms:
        Ms = [int(x) for x in args.Ms.split(",")]
    return Ps, Ms


def targets_md(rows: list[dict]) -> list[str]:
    t = targets_schedules(rows)
    lines = ["## Targets", ""]
    for key, what in (("ratio", f"conveyor step <= {RATIO_TARGET} x simulator ideal"),
                      ("vs_torch", f"conveyor / torch <= {VS_TORCH_TARGET} per shared "
                                   f"schedule")):
        items = t[key]
        missed = [(lb, v) for lb, v, ok in items if not ok]
        lines.append(f"- {what}: **{len(items) - len(missed)}/{len(items)} met**"
                     + (": missed " + ", ".join(f"{lb} ({v:.3f})" for lb, v in missed)
                        if missed else "") + ".")
    if t["median_p8"] is not None:
        lines.append(f"- conveyor / torch median at P = 8: {t['median_p8']:.3f} (target <= "
                     f"{VS_TORCH_MEDIAN_P8}): **{'met' if t['median_p8_met'] else 'missed'}**.")
    mem = t["memory"]
    bad = [(lb, h, b) for lb, h, ok, b in mem if not ok]
    lines.append(f"- conveyor's stage-0 activations within the schedule's bound (its own "
                 f"simulated count): **{len(mem) - len(bad)}/{len(mem)} met**"
                 + ("" if not bad else ": missed " + ", ".join(
                     f"{lb} held {h} (bound {b})" for lb, h, b in bad)) + ".")
    h = headline(rows)
    if h is None:
        lines.append("- Headline (P = 4, M = 8): not in this grid.")
    else:
        cb, tb = h["conveyor_best"], h["torch_best"]
        parts = [f"best conveyor schedule {cb[1]} at {1000 * cb[0]:.1f} ms" if cb else
                 "no conveyor schedule ran"]
        if "vs_1f1b" in h:
            met = "met" if h["vs_1f1b"] <= HEADLINE_TARGET else "missed"
            parts.append(f"{h['vs_1f1b']:.3f} x conveyor's 1F1B (target <= "
                         f"{HEADLINE_TARGET}: **{met}**)")
        if "vs_torch_best" in h:
            parts.append(f"{h['vs_torch_best']:.3f} x torch's best ({tb[1]} at "
                         f"{1000 * tb[0]:.1f} ms)")
        lines.append("- Headline (P = 4, M = 8): " + "; ".join(parts) + ".")
    return lines + [""]


def write_markdown(result: dict, out: Path) -> None:
    rows = result["rows"]
    lines = ["# Every schedule: conveyor and torch.distributed.pipelining", "",
             f"Written by `{result['command']}` in {result['elapsed_s']:.0f} s; raw numbers in "
             "`schedules.json`. " + markdown_conditions(result["meta"]), "",
             "Times are medians of the timed steps, each from a barrier to the last rank's "
             "optimizer update. Ideal: conveyor's simulator on conveyor's schedule of that "
             "name with the configured F, I and W and free links (torch's rows use the same "
             "ideal where conveyor has the name; n/a where it does not). Held s0: "
             "micro-batches held at once on stage 0's rank, conveyor's own recorder (to the "
             "W of a split backward) against its simulated schedule; torch's from the probe "
             "(to the input gradient). RSS growth: one step in processes whose allocator "
             "returns freed memory. n/s: the framework does not run that case (it has no such "
             "schedule, or refuses this P and M); -: not measured.", ""]
    lines += targets_md(rows)
    lines += short_md(out.parent)
    lines += markdown_schedules(rows)
    out.write_text("\n".join(lines))


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def short_md(folder: Path) -> list[str]:
    """Issue 32's section (short actions, the overhead by source), from the
    JSON files in ``folder``; nothing when they are absent."""
    data, parts = _load(folder / "schedules_short.json"), _load(folder / "overhead.json")
    if data is None and parts is None:
        return []
    lines = ["## Short actions (issue 32)", "",
             "Written by `python benchmarks/bench_schedules.py --short` and `--breakdown`; "
             "raw numbers in `schedules_short.json` and `overhead.json` (and "
             "`*_before.json`: the same commands on the code before issue 32's changes, "
             "commit 5a99b98, run with this harness).", ""]
    if data is not None:
        lines += short.markdown_short(data, _load(folder / "schedules_short_before.json"))
    if parts is not None:
        lines += ["### Per-step overhead by source", ""]
        lines += short.markdown_breakdown(parts, _load(folder / "overhead_before.json"))
    notes = folder / "short_notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="P in {2, 4}, M in {4, 8}")
    ap.add_argument("--smoke", action="store_true",
                    help="P = 2, M = 4, one timed step, small activations (seconds)")
    ap.add_argument("--Ps", help="stage counts, comma-separated (2,4,8)")
    ap.add_argument("--Ms", help="micro-batch counts, comma-separated (4,8,16,32)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per framework (5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    ap.add_argument("--forward", type=float, default=0.02, help="emulated F seconds (0.02)")
    ap.add_argument("--backward", type=float, default=0.04,
                    help="emulated B = I + W seconds (0.04)")
    ap.add_argument("--input-grad", type=float, default=None,
                    help="emulated I seconds (default B / 2)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out-dir", default=str(HERE), help="where the results go")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite SCHEDULES.md from schedules.json, run nothing")
    ap.add_argument("--short", action="store_true",
                    help="issue 32: 1f1b, gpipe, interleaved-1f1b with 16 layers of 0.5 and 2 "
                         "ms (forward) at P in {4, 8}, M in {8, 16} -> schedules_short.json")
    ap.add_argument("--breakdown", action="store_true",
                    help="issue 32: conveyor's 1f1b with each overhead source off, in turns "
                         "(P in {4, 8}, M = 8) -> overhead.json")
    ap.add_argument("--suffix", default="",
                    help="append to the --short / --breakdown JSON's name (e.g. _before)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    if args.report_only:
        write_markdown(json.loads((out / "schedules.json").read_text()), out / "SCHEDULES.md")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.short or args.breakdown:
        return run_issue32(args, out, argv)
    workload = EmulatedWorkload(forward=args.forward, backward=args.backward,
                                input_grad=args.input_grad, split_backward=True,
                                **({"width": 64, "mb_size": 2} if args.smoke else {}))
    settings = RunSettings(repeats=1 if args.smoke else args.repeats,
                           warmup=1 if args.smoke else args.warmup)
    Ps, Ms = grid(args)
    schedules = all_schedules()
    t0 = time.monotonic()
    bar = ProgressBar(len(Ps) * len(Ms) * len(schedules), title="schedules ")
    try:
        result = run_benchmark(workload=workload, Ps=Ps, Ms=Ms, schedules=schedules,
                               settings=settings, device=args.device, on_progress=bar.advance)
    finally:
        bar.close()
    result["elapsed_s"] = time.monotonic() - t0
    result["command"] = ("python benchmarks/bench_schedules.py " + " ".join(
        argv if argv is not None else sys.argv[1:])).strip()
    (out / "schedules.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, out / "SCHEDULES.md")
    print(f"wrote {out / 'SCHEDULES.md'} and {out / 'schedules.json'} "
          f"({result['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


def run_issue32(args, out: Path, argv) -> int:
    """``--short`` / ``--breakdown``: run, write the JSON, refresh SCHEDULES.md."""
    Ps = [int(x) for x in args.Ps.split(",")] if args.Ps else [4, 8]
    small = {"width": 64, "mb_size": 2} if args.smoke else {}
    t0 = time.monotonic()
    cmd = ("python benchmarks/bench_schedules.py " + " ".join(
        argv if argv is not None else sys.argv[1:])).strip()
    jobs = []
    if args.short:
        Ms = [int(x) for x in args.Ms.split(",")] if args.Ms else [8, 16]
        jobs.append(("schedules_short", lambda bar, Ms=Ms: short.run_short(
            Ps=Ps, Ms=Ms, repeats=1 if args.smoke else max(args.repeats, 9),
            warmup=1 if args.smoke else args.warmup, on_progress=bar.advance, **small),
            len(Ps) * len(Ms) * len(short.LENGTHS_MS) * len(short.SCHEDULES)))
    if args.breakdown:
        Ms = [int(x) for x in args.Ms.split(",")] if args.Ms else [8]
        jobs.append(("overhead", lambda bar, Ms=Ms: short.run_breakdown(
            Ps=Ps, Ms=Ms, repeats=1 if args.smoke else max(args.repeats, 15),
            warmup=1 if args.smoke else args.warmup, on_progress=bar.advance, **small),
            len(Ps) * len(Ms) * len(short.LENGTHS_MS)))
    for name, run, n in jobs:
        bar = ProgressBar(n, title=f"{name} ")
        try:
            data = run(bar)
        finally:
            bar.close()
        data["command"], data["elapsed_s"] = cmd, time.monotonic() - t0
        (out / f"{name}{args.suffix}.json").write_text(json.dumps(data, indent=1))
    if (out / "schedules.json").exists():
        write_markdown(json.loads((out / "schedules.json").read_text()), out / "SCHEDULES.md")
    print(f"wrote {', '.join(f'{n}{args.suffix}.json' for n, _, _ in jobs)} in {out} "
          f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
