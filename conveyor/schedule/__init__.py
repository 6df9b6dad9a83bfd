"""Schedules as data: the IR, generators, lowering, validation and file I/O."""

from conveyor.schedule.generators import (
    ScheduleSpec, build_schedule, get_spec, register, schedule_names,
)
from conveyor.schedule import families as _families  # noqa: F401 (registers)
from conveyor.schedule.io import (
    dumps_csv, dumps_json, load_schedule, loads_csv, loads_json, save_schedule,
)
from conveyor.schedule.ir import (
    B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule, loop_placement, v_placement,
)
from conveyor.schedule.lowering import add_comms
from conveyor.schedule.render import render_grid
from conveyor.schedule.validate import validate

__all__ = [
    "Action", "Schedule", "ScheduleSpec", "F", "B", "I", "W",
    "SEND_F", "RECV_F", "SEND_B", "RECV_B",
    "build_schedule", "get_spec", "register", "schedule_names",
    "add_comms", "validate", "render_grid", "loop_placement", "v_placement",
    "dumps_json", "loads_json", "dumps_csv", "loads_csv", "save_schedule", "load_schedule",
]
