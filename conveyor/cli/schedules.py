"""``conveyor schedules``: list the registered schedules with their facts."""

from __future__ import annotations

import json

from conveyor.schedule.generators import get_spec, schedule_names


def add_parser(sub) -> None:
    p = sub.add_parser("schedules", help="list the schedules conveyor can generate",
                       description="List every registered schedule: a one-line summary, its "
                                   "published bubble (idle time per rank, in F, I, W; B = I+W) "
                                   "with what it counts, where it holds and its source, and "
                                   "its activation-memory bound per rank.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    specs = [get_spec(n).as_dict() for n in schedule_names()]
    if getattr(args, "json", False):
        print(json.dumps(specs))
        return 0
    width = max(len(d["name"]) for d in specs)
    for d in specs:
        print(f"{d['name']:<{width}}  {d['summary']}")
        pad = " " * (width + 2)
        if d["bubble_formula"]:
            print(f"{pad}bubble  {d['bubble_formula']}  ({d['scope']}, {d['holds_for']}; "
                  f"{d['source']})")
        elif d["formula"]:
            print(f"{pad}bubble  {d['formula']} of the step")
        else:
            print(f"{pad}bubble  no closed form published; simulate it")
        print(f"{pad}memory  {d['memory']} per rank"
              + (f"   options: {', '.join(f'{k}={v}' for k, v in d['options'].items())}"
                 if d["options"] else ""))
    return 0
