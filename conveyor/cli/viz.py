"""``conveyor viz``: the interactive explorer page, written to a file or served."""

from __future__ import annotations

import sys

from conveyor.cli.argtypes import check_outputs, int_at_least, port, positive_float


def _ratios(text: str) -> list[float]:
    from conveyor.views.errors import ViewError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ViewError(f"--ratios {text!r} is not a list of numbers; write e.g. "
                        f"--ratios 1,1.5,2,3") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "viz", help="write the interactive explorer page (or serve it on 127.0.0.1)",
        description="Write one self-contained HTML page (no network needed) with a Gantt "
                    "chart of every schedule for P = 1..16 and M = 1..64, two side by side, "
                    "any costs, the bubble from the formula and from the simulator, memory "
                    "per rank, and the state in the link. With --timeline it also shows a "
                    "measured run above its simulation, or a measured M sweep.")
    p.add_argument("-o", "--output", default=None,
                   help="the page to write (conveyor-explorer.html); with --plan the "
                        "figure, .svg or .png (plan.svg)")
    p.add_argument("--plan", metavar="FILE",
                   help="draw a plan written by `conveyor plan`: its schedule simulated with "
                        "the planner's costs, titled with the split and the predicted step")
    p.add_argument("--timeline", metavar="FILE", action="append", default=[],
                   help="a measured timeline (runtime JSON) to show above its simulation, or "
                        "a measured M sweep (the folder `conveyor demo` writes, or its "
                        "sweep.json) to show as one measured chart per M; give it once per "
                        "step for several recorded steps of one run (the spread per rank "
                        "and the straggler)")
    p.add_argument("--open", action="store_true",
                   help="open the written page in your web browser")
    p.add_argument("-s", "--schedule", help="schedule shown first (gpipe, or the timeline's)")
    p.add_argument("-P", "--ranks", dest="P", type=int_at_least(1),
                   help="P shown first (4, or the timeline's)")
    p.add_argument("-M", "--microbatches", dest="M", type=int_at_least(1),
                   help="M shown first (8, or the timeline's)")
    p.add_argument("--view", choices=("fwd", "step"),
                   help="forward-only or training-step view first (fwd, or step with a timeline)")
    p.add_argument("--ratio", type=positive_float, default=2.0,
                   help="backward/forward cost shown first (2; the page takes any costs)")
    p.add_argument("--ratios", default=None,
                   help="B/F ratios whose step time and bubble Python embeds to check the "
                        "page's replay against (2)")
    p.add_argument("--max-P", type=int_at_least(1), default=16, help="largest P offered (16)")
    p.add_argument("--max-M", type=int_at_least(1), default=64, help="largest M offered (64)")
    p.add_argument("--serve", action="store_true",
                   help="serve the page on 127.0.0.1 with Python simulating on request")
    p.add_argument("--port", type=port, default=8765, help="port for --serve (8765; 0: any)")
    p.add_argument("--no-cache", action="store_true",
                   help="rebuild the page's data even if a cached copy matches")
    p.add_argument("--jobs", type=int_at_least(1, 256), default=None, help="worker processes for the build")
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.schedule import get_spec
    from conveyor.sim import load_timeline
    from conveyor.views.data import DEFAULT_RATIOS, build_data
    from conveyor.views.errors import ViewError
    from conveyor.views.measured import measured_section
    from conveyor.views.page import render_page, write_page
    from conveyor.views.serve import SERVE_RATIOS, make_server
    from conveyor.views.steps import steps_section
    from conveyor.views.sweep import is_sweep, sweep_section

    if args.plan:
        return draw_plan(args)
    if args.output is None:
        args.output = "conveyor-explorer.html"
    if not args.serve:
        check_outputs([args.output])
    ratios = _ratios(args.ratios) if args.ratios else list(SERVE_RATIOS if args.serve else DEFAULT_RATIOS)
    # The page replays any costs; --ratio only sets the B/F it shows first.
    if not 0 < args.ratio <= 100:
        raise ViewError(f"--ratio {args.ratio:g} is not a valid backward/forward cost; "
                        f"give a number in (0, 100], e.g. 2")
    measured = sweep = steps = None
    if len(args.timeline) > 1:
        if any(is_sweep(t) for t in args.timeline):
            raise ViewError("a measured sweep is shown alone; give its folder as the only "
                            "--timeline, or give one timeline file per step")
        steps = steps_section([load_timeline(t) for t in args.timeline], args.timeline,
                              schedule=args.schedule, P=args.P, M=args.M)
        measured = steps["runs"][steps["median_step"]]
    elif args.timeline and is_sweep(args.timeline[0]):
        sweep = sweep_section(args.timeline[0])
        measured = sweep["runs"][-1]  # the explorer starts at the sweep's largest M
    elif args.timeline:
        tl = load_timeline(args.timeline[0])
        measured = measured_section(tl, source=args.timeline[0], schedule=args.schedule,
                                    P=args.P, M=args.M)
    initial = {"schedule": args.schedule if args.schedule is not None
               else (measured or {}).get("schedule", "gpipe"),
               # The defaults shown first (P=4, M=8) shrink to fit a smaller --max-P/-M:
               # only a -P or -M the user typed can be out of the page's range.
               "P": args.P or (measured or {}).get("P", min(4, args.max_P)),
               "M": args.M or (measured or {}).get("M", min(8, args.max_M)),
               "view": args.view or ("step" if measured and not measured["forward_only"]
                                     else "fwd"),
               "ratio": args.ratio}
    if initial["schedule"] != "decode" or args.serve:  # the page's decode entry (views.decodedata)
        get_spec(initial["schedule"])
    for key, top in (("P", args.max_P), ("M", args.max_M)):
        if not 1 <= initial[key] <= top and not measured:
            raise ViewError(f"-{key} {initial[key]} is outside the page's 1..{top}; "
                            f"choose 1..{top} or raise --max-{key}")
    if args.serve:
        server = make_server(port=args.port, P_max=args.max_P, M_max=args.max_M,
                             ratios=ratios, initial=initial, measured=measured, sweep=sweep,
                             steps=steps)
        host, port = server.server_address[:2]
        print(f"conveyor viz: serving the explorer at http://{host}:{port}/ (Ctrl-C stops)",
              flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    def note() -> None:
        print(f"conveyor viz: building the page's data (every schedule, P 1..{args.max_P}, "
              f"M 1..{args.max_M}; cached for next time)", file=sys.stderr, flush=True)

    def progress(name: str, done: int, total: int, seconds: float) -> None:
        print(f"conveyor viz: [{done}/{total}] {name} ({seconds:.1f} s)", file=sys.stderr,
              flush=True)

    data = build_data(P_max=args.max_P, M_max=args.max_M, ratios=ratios, jobs=args.jobs,
                      cache=not args.no_cache, on_build=note, on_progress=progress)
    html = render_page(data, initial=initial, measured=None if sweep or steps else measured,
                       sweep=sweep, steps=steps)
    path = write_page(args.output, html)
    print(f"wrote {path} ({len(html.encode()) / 1e6:.2f} MB); open it in a browser")
    if args.open:
        import webbrowser
        if not webbrowser.open(path.resolve().as_uri()):
            print(f"conveyor viz: no web browser found; open {path} yourself", file=sys.stderr)
    return 0


def plan_summary(plan, tl) -> list[str]:
    """The plan's title line and its summary lines, from the plan and the
    timeline simulated with its costs (``tl``)."""
    from conveyor.plan.messages import checkpoint_text, fmt_bytes, fmt_time

    sched, pred = plan.schedule, plan.predicted
    v = sched.S // sched.P
    ck_text = checkpoint_text(plan.checkpoint)
    title = (f"plan: {sched.name}, P={sched.P}, M={sched.M}" + (f", v={v}" if v > 1 else "")
             + f", layers per stage {','.join(map(str, plan.balance))}, checkpoint {ck_text}"
             + f" | predicted step {fmt_time(tl.step_time)}, bubble "
             f"{100 * tl.bubble_overall:.1f}% (simulated, profiled costs)")
    lines = [title, f"micro-batch sizes: {_sizes_text(plan.data.get('microbatch_sizes', []))}"
             f" (batch {plan.batch})"]
    peaks = pred.get("peak_bytes") or []
    if peaks:
        budget = plan.data.get("memory_budget")
        lines.append("peak memory per rank: " + ", ".join(fmt_bytes(b) for b in peaks)
                     + (f" (budget {fmt_bytes(budget)})" if budget else " (no budget)"))
    return lines


def _sizes_text(sizes) -> str:
    from collections import Counter

    return " + ".join(f"{k} x {n}" for n, k in sorted(Counter(sizes).items(), reverse=True))


def draw_plan(args) -> int:
    """``viz --plan``: the plan's schedule simulated with the plan's own
    costs (so the bubble drawn is the planner's), as a PNG or SVG figure."""
    from conveyor.plan import load_plan
    from conveyor.sim import simulate
    from conveyor.views.errors import ViewError
    from conveyor.views.plot import figure_format, gantt_figure, save_figure

    out = "plan.svg" if args.output is None else args.output
    if args.timeline or args.serve:
        raise ViewError(f"--plan draws one plan as a figure; drop "
                        f"{'--timeline' if args.timeline else '--serve'}")
    figure_format(out)  # .svg or .png, before any work
    check_outputs([out])
    plan = load_plan(args.plan)
    tl = simulate(plan.schedule, plan.cost_model(), check=False, unit="s")
    lines = plan_summary(plan, tl)
    fig = gantt_figure([tl], titles=[lines[0].replace(" | ", "\n")])
    print("\n".join(lines))
    print(f"wrote {save_figure(fig, out)}")
    return 0
