"""``conveyor trace``: a timeline as Chrome / Perfetto trace JSON."""

from __future__ import annotations

from conveyor.cli.argtypes import check_outputs
from conveyor.cli.viewargs import add_timeline_args, timeline_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "trace", help="export a timeline as Chrome/Perfetto trace JSON",
        description="Write a simulated or measured timeline as Trace Event JSON for "
                    "ui.perfetto.dev or chrome://tracing: one track per rank, one slice per "
                    "action named like 2F5. A slot is shown as one millisecond.")
    add_timeline_args(p)
    p.add_argument("-o", "--output", default="trace.json", help="output file (trace.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.views.trace import save_trace

    check_outputs([args.output])
    tl, _ = timeline_from_args(args)
    path = save_trace(tl, args.output)
    print(f"wrote {path}: {len(tl.events)} slices on {tl.P} rank track(s); open it in "
          f"ui.perfetto.dev")
    return 0
