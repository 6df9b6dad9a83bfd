"""conveyor: pipeline parallelism for PyTorch.

The top-level package and everything under ``conveyor.schedule``,
``conveyor.sim`` and ``conveyor.views`` import without torch. The runtime
(``conveyor.runtime``) needs torch and is imported on demand.
"""

from conveyor.errors import (
    ConveyorError, CostModelError, PartitionError, PipelineError, ScheduleError,
    TimelineError, ValidationError,
)
from conveyor.schedule import (
    Action, Schedule, add_comms, build_schedule, load_schedule, save_schedule,
    schedule_names, validate,
)
from conveyor.sim import CostModel, Timeline, formula_bubble, load_timeline, simulate

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``conveyor.profile`` needs torch: import it on first use only, so that
    # ``import conveyor`` stays torch-free.
    if name == "profile":
        from conveyor.measure.profile import profile
        return profile
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")

__all__ = [
    "Action", "Schedule", "CostModel", "Timeline",
    "build_schedule", "schedule_names", "validate", "add_comms", "simulate", "formula_bubble",
    "load_schedule", "save_schedule", "load_timeline",
    "ConveyorError", "ScheduleError", "ValidationError", "CostModelError", "TimelineError",
    "PartitionError", "PipelineError",
]
