"""Typed errors. Each names the bad value and says how to fix it.

Every error conveyor raises on user input derives from ``ConveyorError``, so the
CLI can turn any of them into a one-line message and exit code 2.
"""

__all__ = [
    "ConveyorError",
    "ScheduleError",
    "ValidationError",
    "CostModelError",
    "TimelineError",
    "PartitionError",
    "PipelineError",
    "PlanError",
]


class ConveyorError(Exception):
    """Base class of the errors conveyor raises on bad input."""


class ScheduleError(ConveyorError, ValueError):
    """A schedule cannot be built or read: bad P, M, name, text form or file."""


class ValidationError(ScheduleError):
    """A schedule breaks a rule (completeness, dependency, pairing, deadlock).

    ``rank`` and ``step`` locate the failing action, ``grid`` is the rendered
    schedule with that cell marked (also part of ``str(err)``).
    """

    def __init__(self, message: str, *, rank: int | None = None, step: int | None = None,
                 action: object = None, grid: str = ""):
        self.message = message
        self.rank = rank
        self.step = step
        self.action = action
        self.grid = grid
        super().__init__(message + ("\n" + grid if grid else ""))


class CostModelError(ConveyorError, ValueError):
    """A cost model has a negative, non-finite or wrongly sized value."""


class TimelineError(ConveyorError, ValueError):
    """A timeline file or object is malformed or does not match its schedule."""


class PartitionError(ConveyorError, ValueError):
    """Layers cannot be split into the requested stages."""


class PipelineError(ConveyorError, RuntimeError):
    """The runtime met bad input or a failing rank."""


class PlanError(ConveyorError, ValueError):
    """A profile or plan is malformed, belongs to another model, or no plan fits."""
