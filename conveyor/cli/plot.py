"""``conveyor plot``: static figures (PNG, SVG) of timelines and of bubble vs M."""

from __future__ import annotations

from conveyor.cli.argtypes import check_outputs, int_at_least, positive_float
from conveyor.cli.viewargs import add_timeline_args, timeline_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="write PNG/SVG figures: a Gantt chart, or bubble vs M",
                       description="Static figures with matplotlib.")
    figs = p.add_subparsers(dest="figure", metavar="FIGURE", parser_class=type(p), required=True)
    g = figs.add_parser("gantt", help="Gantt chart of a simulated or measured timeline",
                        description="Gantt chart: rows are ranks, time runs right, idle time "
                                    "is shaded. The format follows each output's suffix.")
    add_timeline_args(g)
    g.add_argument("--compare", action="store_true",
                   help="with --timeline: draw the schedule simulated with the measured "
                        "per-stage costs below the measured run")
    g.add_argument("-o", "--output", action="append", metavar="FILE",
                   help="output .png or .svg; repeat for both (default gantt.png)")
    g.set_defaults(func=run_gantt)
    b = figs.add_parser("bubble", help="bubble fraction vs M: formula, simulated, measured",
                        description="The closed-form bubble against M, simulated points and "
                                    "a point per measured timeline.")
    b.add_argument("-s", "--schedule", help="schedule name (default: the timelines', else gpipe)")
    b.add_argument("-P", "--ranks", dest="P", type=int_at_least(1),
                   help="pipeline ranks (default: the timelines', else 4)")
    b.add_argument("--max-M", type=int_at_least(1), default=64,
                   help="largest M on the axis (64)")
    b.add_argument("--ratio", type=positive_float, default=2.0,
                   help="backward/forward cost for the simulated points (2)")
    b.add_argument("--timeline", action="append", default=[], metavar="FILE",
                   help="a measured timeline; repeat for several M")
    b.add_argument("-o", "--output", action="append", metavar="FILE",
                   help="output .png or .svg; repeat for both (default bubble.png)")
    b.set_defaults(func=run_bubble)


def run_gantt(args) -> int:
    from conveyor.views.measured import simulate_like
    from conveyor.views.plot import figure_format, gantt_figure, save_figure

    outputs = args.output or ["gantt.png"]
    for out in outputs:  # refuse a bad name before any file is written
        figure_format(out)
    if args.compare and not args.timeline:
        from conveyor.errors import TimelineError

        raise TimelineError("--compare draws a measured timeline above its simulation; give "
                            "--timeline FILE (a timeline the runtime measured), or drop "
                            "--compare")
    check_outputs(outputs)
    tl, sched = timeline_from_args(args)
    tls = [tl, simulate_like(tl, sched)] if args.compare and sched is not None else [tl]
    fig = gantt_figure(tls)
    for out in outputs:
        print(f"wrote {save_figure(fig, out)}")
    return 0


def run_bubble(args) -> int:
    from conveyor.sim import load_timeline
    from conveyor.views.measured import match_schedule
    from conveyor.views.plot import bubble_vs_m_figure, figure_format, save_figure

    outputs = args.output or ["bubble.png"]
    for out in outputs:
        figure_format(out)
    check_outputs(outputs)
    tls = [load_timeline(path) for path in args.timeline]
    name = args.schedule if args.schedule is not None else (tls[0].schedule if tls else "gpipe")
    P = args.P or (tls[0].P if tls else 4)
    for path, tl in zip(args.timeline, tls):
        match_schedule(tl, source=repr(path), schedule=name, P=P)
    fig = bubble_vs_m_figure(name, P, M_max=args.max_M, ratio=args.ratio, measured=tls)
    for out in outputs:
        print(f"wrote {save_figure(fig, out)}")
    return 0
