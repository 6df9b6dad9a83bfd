"""``conveyor schedules``: list the registered schedules, one line each."""

from __future__ import annotations

from conveyor.schedule.generators import get_spec, schedule_names


def add_parser(sub) -> None:
    p = sub.add_parser("schedules", help="list the schedules conveyor can generate",
                       description="List every registered schedule with a one-line summary "
                                   "and its closed-form bubble, where one is known.")
    p.set_defaults(func=run)


def run(args) -> int:
    names = schedule_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_spec(name)
        bubble = f"  [bubble {spec.formula}]" if spec.formula else ""
        print(f"{name:<{width}}  {spec.summary}{bubble}")
    return 0
