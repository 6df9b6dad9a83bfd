"""``conveyor simulate``: predict a schedule's timeline, bubble and memory."""

from __future__ import annotations

import argparse
import json
import sys

from conveyor.cli.argtypes import bytes_arg, check_outputs, int_at_least
from conveyor.cli.dpargs import add_dp_options, dp_fields, dp_report
from conveyor.cli.names import add_deprecated
from conveyor.errors import ScheduleError
from conveyor.schedule.generators import build_schedule, schedule_names
from conveyor.schedule.io import load_schedule
from conveyor.sim.cost import CostModel
from conveyor.sim.simulate import formula_bubble, simulate
from conveyor.views.files import atomic_write
from conveyor.views.terminal import render_gantt, use_colour


def costs_arg(text: str):
    """One number, or a comma-separated list with one number per stage."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number or a comma-separated list of numbers") from None
    if any(v < 0 or v != v or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: costs must be finite numbers >= 0")
    return values[0] if len(values) == 1 else values


positive_int = int_at_least(1)


def bandwidth_arg(text: str) -> float:
    """Bytes per time unit, with an optional size suffix (100GB); inf: free."""
    return float("inf") if text.strip().lower() == "inf" else bytes_arg(text)
# Beyond this many (row, column) cells a terminal chart is thousands of lines.
CHART_CELLS = 200_000


def min_duration(timeline) -> float:
    """The shortest compute action (the chart's column), 1 when there is none."""
    return min([e[3] - e[2] for e in timeline.events if e[3] > e[2]], default=1.0)


def add_cost_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost model (per micro-batch; one number, or one per stage)")
    g.add_argument("--forward", type=costs_arg, default=1.0, metavar="T", help="F time (1)")
    g.add_argument("--backward", type=costs_arg, default=2.0, metavar="T", help="B time (2)")
    g.add_argument("--input-grad", type=costs_arg, default=None, metavar="T",
                   help="I time (half of B)")
    g.add_argument("--weight-grad", type=costs_arg, default=None, metavar="T",
                   help="W time (B minus I)")
    g.add_argument("--latency", type=costs_arg, default=0.0, metavar="T",
                   help="fixed time per transfer across a cut (0)")
    g.add_argument("--bandwidth", type=bandwidth_arg, default=float("inf"), metavar="BYTES/T",
                   help="link bandwidth within a node, bytes per time unit, e.g. 1e9 or "
                        "100GB (unlimited)")
    g.add_argument("--activation-bytes", type=costs_arg, default=0.0, metavar="BYTES",
                   help="bytes of one micro-batch's activation at each cut (0)")


def cost_model(args, P: int | None = None) -> CostModel:
    """The cost model the flags give; with P, the data-parallel and node flags too."""
    extra = dp_fields(args, P) if P is not None else {}
    return CostModel(forward=args.forward, backward=args.backward, input_grad=args.input_grad,
                     weight_grad=args.weight_grad, latency=args.latency,
                     bandwidth=args.bandwidth, activation_bytes=args.activation_bytes, **extra)


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="predict step time, bubble and memory of a schedule",
                       description="Simulate one training step of a schedule and draw it: "
                                   "rows are stages, columns are time slots.")
    p.add_argument("-P", "--ranks", dest="P", type=positive_int, default=None,
                   help="pipeline ranks (4)")
    add_deprecated(p, "--stages", dest="P", use="-P/--ranks", type=positive_int)
    p.add_argument("-M", "--microbatches", dest="M", type=positive_int, default=None,
                   help="micro-batches per step (8)")
    p.add_argument("-s", "--schedule", default=None,
                   help=f"schedule name: {', '.join(schedule_names())} (1f1b)")
    p.add_argument("-v", "--chunks", dest="v", type=positive_int, default=None,
                   help="chunks per rank for interleaved-1f1b and looped-bfs (2)")
    p.add_argument("--cap", type=positive_int, default=None,
                   help="zb-auto: most micro-batches in flight per rank (P)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="v-budget: most chunk-activations per rank (V-Half's peak)")
    p.add_argument("--placement", choices=["line", "v"], default=None,
                   help="zb-auto: one stage per rank (line) or a V (stages r, 2P-1-r on r)")
    p.add_argument("--file", help="simulate a schedule file (.json or torch-style .csv) "
                                  "instead of generating one")
    p.add_argument("--forward-only", action="store_true",
                   help="forward passes only, as in the seed's picture")
    add_cost_options(p)
    add_dp_options(p)
    from conveyor.cli.simdecode import add_decode_options
    add_decode_options(p, positive_int)
    p.add_argument("--json", action="store_true", help="print the timeline and metrics as JSON")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="also write the timeline to FILE (for `conveyor plot gantt --timeline` "
                        "and `conveyor viz --timeline`)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the chart (auto: when writing to a terminal)")
    p.add_argument("--chart", choices=["auto", "always", "never"], default="auto",
                   help=f"print the chart (auto: up to {CHART_CELLS:,} cells)")
    p.add_argument("--width", type=positive_int, default=None,
                   help="fold the chart at this many columns (terminal width)")
    p.set_defaults(func=run)


def schedule_options(args) -> dict:
    """The generator options the flags give, checked against what it takes."""
    from conveyor.errors import ScheduleError
    from conveyor.schedule.generators import get_spec
    spec = get_spec(args.schedule)
    given = {"v": args.v, "cap": args.cap, "placement": args.placement, "budget": args.budget}
    given = {k: v for k, v in given.items() if v is not None}
    flags = {"v": "--chunks", "cap": "--cap", "placement": "--placement", "budget": "--budget"}
    for k in given:
        if k not in spec.options:
            raise ScheduleError(f"schedule {spec.name!r} takes no {flags[k]}; it applies to "
                                + ", ".join(n for n in schedule_names()
                                            if k in get_spec(n).options))
    if "cap" in spec.options or "budget" in spec.options:  # planned for the costs simulated
        given["costs"] = cost_model(args)
    return given


def run(args) -> int:
    if args.output is not None:
        check_outputs([args.output])
    if args.decode or args.new_tokens is not None or args.prefill_chunks is not None:
        if not args.decode:
            raise ScheduleError("--new-tokens and --prefill-chunks go with --decode")
        from conveyor.cli.simdecode import run_decode
        return run_decode(args)
    if args.file:
        given = [opt for opt, v in (("-P", args.P), ("-M", args.M), ("--schedule", args.schedule),
                                    ("--chunks", args.v), ("--cap", args.cap),
                                    ("--placement", args.placement), ("--budget", args.budget))
                 if v is not None]
        if given:
            raise ScheduleError(f"--file {args.file!r} sets the schedule, P and M; drop "
                                f"{', '.join(given)} (or drop --file)")
        schedule = load_schedule(args.file)
    else:
        # `-s ""` is a name too (an unknown one): only a missing -s means the default.
        args.schedule = "1f1b" if args.schedule is None else args.schedule
        args.P, args.M = args.P or 4, args.M or 8
        schedule = build_schedule(args.schedule, args.P, args.M, **schedule_options(args))
    if args.forward_only:
        schedule = schedule.without_backward()
    timeline = simulate(schedule, cost_model(args, schedule.P))
    if args.output is not None:
        atomic_write(args.output, lambda tmp: timeline.save(tmp))
    # The registry's fraction assumes the default options (v=2, default costs).
    formula = None if args.file or args.forward_only or args.v not in (None, 2) \
        else formula_bubble(schedule.name, schedule.P, schedule.M)
    if args.json:
        out = {"schedule": schedule.name, "P": schedule.P, "M": schedule.M, "S": schedule.S,
               "metrics": timeline.summary(),
               "formula_bubble": None if formula is None else float(formula),
               "timeline": timeline.to_dict()}
        json.dump(out, sys.stdout)
        print()
        return 0
    colour = args.color == "always" or (args.color == "auto" and use_colour())
    cells = schedule.S * timeline.step_time / min_duration(timeline)
    if args.chart == "always" or (args.chart == "auto" and cells <= CHART_CELLS):
        print(render_gantt(timeline, colour=colour, width=args.width))
    elif args.chart == "auto":
        print(f"(chart left out: {schedule.S} rows of {cells / schedule.S:,.0f} columns; "
              f"--chart always prints it, `-o FILE` then `conveyor plot gantt --timeline "
              f"FILE` draws it)")
    print(report(schedule, timeline, formula))
    return 0


def report(schedule, timeline, formula) -> str:
    """The summary under the chart: step time, bubble (formula vs simulated), memory."""
    P, M = schedule.P, schedule.M
    lines = [f"schedule {schedule.name}: P={P} ranks, S={schedule.S} stages, M={M} micro-batches"]
    if schedule.meta.get("requested_M", M) != M:
        lines.append(f"  note: {schedule.name} runs the whole batch as one micro-batch, so M={M}")
    lines += dp_report(timeline)
    lines.append(f"step time           {timeline.step_time:g} {timeline.unit}s")
    from conveyor.schedule.generators import get_spec, schedule_names
    spec = get_spec(schedule.name) if schedule.name in schedule_names() else None
    if spec is not None and spec.bubble_formula:
        lines.append(f"bubble formula      {spec.bubble_formula} per rank ({spec.scope}, "
                     f"{spec.holds_for}; {spec.source})")
    sim = timeline.bubble_overall
    if formula is not None:
        lines.append(f"bubble (formula)    {formula.numerator}/{formula.denominator} = "
                     f"{float(formula):.1%}")
    lines.append(f"bubble (simulated)  {sim:.1%}")
    lines.append("bubble per rank     " + "  ".join(f"{b:.1%}" for b in timeline.bubbles()))
    if not schedule.forward_only:
        if spec is not None and spec.memory_text:
            lines.append(f"memory bound        {spec.memory_text} per rank")
        lines.append("peak activations    " + "  ".join(
            f"r{r}:{n}" for r, n in enumerate(timeline.peak_activations()))
            + ("  (micro-batches held per rank)" if schedule.S == P
               else "  (chunk-activations held per rank; a chunk is one of its stages)"))
    return "\n".join(lines)
