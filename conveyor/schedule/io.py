"""Schedules to and from JSON and CSV.

JSON keeps everything (name, P, M, placement, forward_only). CSV is the layout
torch.distributed.pipelining writes with ``_dump_csv``: one row per rank, one
action per cell (``0F0``, ``1B3``, ``2W1``), empty cells for idle steps. When
read back, placement comes from which row names a stage and M from the largest
micro-batch. torch's FSDP actions (UNSHARD, RESHARD, REDUCE_GRAD) carry no
pipeline work and are dropped; an OVERLAP_F_B cell ``(0F1;0B0)OVERLAP_F_B`` is
read as its parts in order.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from conveyor.errors import ScheduleError
from conveyor.schedule.ir import Schedule, schedule_from_rows
from conveyor.userfiles import parse_json, read_text

__all__ = ["schedule_to_dict", "schedule_from_dict", "dumps_json", "loads_json",
           "dumps_csv", "loads_csv", "save_schedule", "load_schedule"]

FORMAT = "conveyor.schedule/1"
_DROPPED = re.compile(r"^\s*\d+(UNSHARD|RESHARD|REDUCE_GRAD)\d*\s*$")
_OVERLAP = re.compile(r"^\s*\((.*)\)OVERLAP_F_B\s*$")


def schedule_to_dict(schedule: Schedule) -> dict:
    return {"format": FORMAT, "name": schedule.name, "P": schedule.P, "M": schedule.M,
            "placement": list(schedule.placement), "forward_only": schedule.forward_only,
            "actions": schedule.text_rows()}


def schedule_from_dict(data: dict, *, source: str = "schedule") -> Schedule:
    if not isinstance(data, dict) or "actions" not in data:
        raise ScheduleError(f"{source} is not a conveyor schedule: expected a JSON object with "
                            f"'actions' (one list of actions per rank)")
    rows = data["actions"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ScheduleError(f"{source}: 'actions' must be a list of lists of strings like '0F0'")
    _check_fields(data, source)
    sched = schedule_from_rows(str(data.get("name", source)), rows, M=data.get("M"),
                               placement=data.get("placement"),
                               forward_only=bool(data.get("forward_only", False)))
    if "P" in data and data["P"] != sched.P:
        raise ScheduleError(f"{source}: P={data['P']} but 'actions' has {sched.P} rank rows")
    return sched


def _check_fields(data: dict, source: str) -> None:
    """The optional fields' types, so a wrong one is named rather than crashing later."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool)

    pl = data.get("placement")
    if pl is not None and not (isinstance(pl, list) and all(count(r) for r in pl)):
        raise ScheduleError(f"{source}: 'placement' is {pl!r}; give a list with the rank of "
                            f"each stage, e.g. [0, 1, 2, 3]")
    for key in ("P", "M"):
        if key in data and data[key] is not None and not count(data[key]):
            raise ScheduleError(f"{source}: {key!r} is {data[key]!r}; give a positive integer")
    if not isinstance(data.get("forward_only", False), bool):
        raise ScheduleError(f"{source}: 'forward_only' is {data['forward_only']!r}; give true "
                            f"or false")


def dumps_json(schedule: Schedule) -> str:
    return json.dumps(schedule_to_dict(schedule), indent=1)


def loads_json(text: str, *, source: str = "schedule") -> Schedule:
    data = parse_json(text, source=source, error=ScheduleError,
                      fix="expected a schedule written by conveyor")
    return schedule_from_dict(data, source=source)


def dumps_csv(schedule: Schedule) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(schedule.text_rows())
    return buf.getvalue()


def _expand(cell: str) -> list[str]:
    if _DROPPED.match(cell):
        return []
    m = _OVERLAP.match(cell)
    if m:
        return [part for part in m.group(1).split(";") if part.strip()]
    return [cell] if cell.strip() else []


def loads_csv(text: str, *, name: str = "schedule") -> Schedule:
    rows = [[part for cell in row for part in _expand(cell)]
            for row in csv.reader(io.StringIO(text))]
    while rows and not rows[-1]:
        rows.pop()
    if not rows:
        raise ScheduleError(f"{name} holds no schedule: expected one CSV row of actions per rank")
    return schedule_from_rows(name, rows)


def save_schedule(schedule: Schedule, path: str | Path) -> Path:
    """Write JSON or CSV, chosen by the file's suffix (.json or .csv)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ScheduleError(f"cannot tell the format of {str(path)!r}; name it .json or .csv")
    path.write_text(dumps_json(schedule) if suffix == ".json" else dumps_csv(schedule))
    return path


def load_schedule(path: str | Path) -> Schedule:
    """Read a schedule file: .json (conveyor) or .csv (conveyor or torch layout)."""
    path = Path(path)
    text = read_text(path, what="schedule file", error=ScheduleError,
                     fix="pass a .json or .csv schedule file")
    if path.suffix.lower() == ".csv":
        return loads_csv(text, name=path.stem)
    return loads_json(text, source=f"schedule file {str(path)!r}")
