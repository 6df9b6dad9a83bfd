"""``conveyor simulate --decode``: the decode schedule (prefill, then one
round per token, in M lanes) under unit or given costs: its chart folded to
the real stages, and tokens per time unit and idle fraction against M."""

from __future__ import annotations

import json
import sys

from conveyor.errors import ScheduleError
from conveyor.sim.decode import decode_rows, decode_summary, fold_rounds, simulate_decode
from conveyor.views.terminal import render_gantt, use_colour

__all__ = ["add_decode_options", "run_decode"]


def add_decode_options(p, positive_int) -> None:
    g = p.add_argument_group("decoding (with --decode; -M is the number of lanes)")
    g.add_argument("--decode", action="store_true",
                   help="simulate generation: a prefill round, then one round per new token, "
                        "M lanes in flight; --forward is a stage's time per round")
    g.add_argument("--new-tokens", type=positive_int, default=None, metavar="N",
                   help="tokens generated per sequence (16)")
    g.add_argument("--prefill-chunks", type=positive_int, default=None, metavar="C",
                   help="prefill rounds: the prompt in C chunks (1)")


def run_decode(args) -> int:
    """Print the decode chart and table (or JSON) for the parsed ``args``."""
    wrong = [flag for flag, v in (("--file", args.file), ("--schedule", args.schedule),
                                  ("--chunks", args.v), ("--cap", args.cap),
                                  ("--placement", args.placement)) if v]
    if args.forward_only:
        wrong.append("--forward-only")
    if getattr(args, "dp", None) not in (None, 1):
        wrong.append("--dp")
    if wrong:
        raise ScheduleError(f"--decode simulates the decode schedule itself; drop "
                            f"{', '.join(wrong)}")
    P, M = args.P or 4, args.M or 4
    N, C = args.new_tokens or 16, args.prefill_chunks or 1
    step, latency = args.forward, args.latency
    if isinstance(latency, list):
        raise ScheduleError("--decode takes one --latency for every transfer")
    tl = simulate_decode(P, M, new_tokens=N, chunks=C, step=step, latency=latency)
    lanes = sorted({1, 2, *range(4, 2 * P + 1, 4 if P > 8 else 2), P, M} - {0})
    lanes = [m for m in lanes if m <= max(2 * P, M)]
    rows = decode_rows(P, lanes, new_tokens=N, chunks=C, step=step, latency=latency) \
        if not isinstance(step, list) else [decode_summary(simulate_decode(
            P, m, new_tokens=N, chunks=C, step=step, latency=latency)) for m in lanes]
    if args.json:
        json.dump({"decode": tl.meta["decode"], "metrics": decode_summary(tl),
                   "lanes": rows, "timeline": tl.to_dict()}, sys.stdout)
        print()
        return 0
    colour = args.color == "always" or (args.color == "auto" and use_colour())
    if args.chart != "never":
        chart = render_gantt(fold_rounds(tl), colour=colour, width=args.width)
        legend = chart.rsplit("\n", 1)[1].split("F:")[0]  # "one column = 1 slot"
        print(chart.rsplit("\n", 1)[0] + f"\n{legend}each cell: the lane a stage works on   "
              f"idle: ·")
    print(report(tl, rows))
    return 0


def report(tl, rows) -> str:
    s = decode_summary(tl)
    P, M = s["P"], s["M"]
    lines = [f"decode: P={P} ranks, M={M} lanes, {s['chunks']} prefill round(s) then "
             f"{s['new_tokens'] - 1} token rounds ({s['new_tokens']} tokens per sequence)",
             f"time                {s['time']:g} {tl.unit}s for {s['tokens']} tokens "
             f"(one sequence per lane): {s['tokens_per_time']:.3f} tokens per {tl.unit}",
             "idle per rank       " + "  ".join(f"{x:.1%}" for x in s["idle"]),
             f"one lane leaves each rank idle (P-1)/P = {(P - 1) / P:.1%}; lanes >= P fill "
             f"the pipeline",
             "",
             f"{'lanes':>5}  {'tokens/' + tl.unit:>12}  {'x one process':>13}  {'idle':>6}"]
    for r in rows:
        speed = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        lines.append(f"{r['M']:>5}  {r['tokens_per_time']:>12.3f}  {speed:>13}  "
                     f"{r['idle_overall']:>6.1%}")
    return "\n".join(lines)
