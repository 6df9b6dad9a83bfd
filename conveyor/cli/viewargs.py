"""Options shared by the view commands (plot, trace): which timeline to draw.

Either ``--timeline FILE`` (a measured or saved timeline) or a schedule to
simulate (``--schedule``, ``-P``, ``-M``, ``--ratio``, ``--forward-only``).
Not a sub-command itself (it is not in COMMANDS).
"""

from __future__ import annotations

import argparse

from conveyor.cli.argtypes import int_at_least, positive_float

__all__ = ["add_timeline_args", "timeline_from_args", "simulated"]


def add_timeline_args(p: argparse.ArgumentParser, *, timeline: bool = True) -> None:
    if timeline:
        p.add_argument("--timeline", metavar="FILE",
                       help="a timeline JSON file (measured by the runtime, or saved); "
                            "without it the schedule below is simulated")
    p.add_argument("-s", "--schedule", help="schedule name (default gpipe, or the timeline's)")
    p.add_argument("-P", "--ranks", dest="P", type=int_at_least(1),
                   help="pipeline ranks (default 4, or the timeline's)")
    p.add_argument("-M", "--microbatches", dest="M", type=int_at_least(1),
                   help="micro-batches (default 8, or the timeline's)")
    p.add_argument("--ratio", type=positive_float, default=2.0,
                   help="backward/forward cost when simulating; F takes one slot (default 2)")
    p.add_argument("--forward-only", action="store_true",
                   help="simulate the forward pass only (inference, as in the seed's picture)")


def simulated(name: str, P: int, M: int, *, ratio: float = 2.0, forward_only: bool = False):
    """Simulate schedule ``name`` with F = 1 slot and B = ``ratio`` slots."""
    from conveyor.schedule import build_schedule
    from conveyor.sim import CostModel, simulate

    sched = build_schedule(name, P, M)
    if forward_only:
        sched = sched.without_backward()
    return simulate(sched, CostModel(forward=1.0, backward=ratio))


def timeline_from_args(args) -> tuple:
    """(timeline, its schedule) from the parsed options; a loaded timeline is
    checked to be a run of its schedule (and of --schedule/-P/-M if given)."""
    from conveyor.sim import load_timeline
    from conveyor.views.measured import match_schedule

    path = getattr(args, "timeline", None)
    if path:
        if getattr(args, "forward_only", False):
            from conveyor.errors import TimelineError

            raise TimelineError(f"--forward-only applies to a simulated schedule, not to "
                                f"--timeline {str(path)!r}; drop one of them")
        tl = load_timeline(path)
        sched = match_schedule(tl, source=repr(str(path)), schedule=args.schedule,
                               P=args.P, M=args.M)
        return tl, sched
    name = "gpipe" if args.schedule is None else args.schedule  # `--schedule ""` is refused
    tl = simulated(name, args.P or 4, args.M or 8, ratio=args.ratio,
                   forward_only=args.forward_only)
    return tl, None
