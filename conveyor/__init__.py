"""conveyor: pipeline parallelism for PyTorch. Quick start (save as train.py,
run ``python train.py``, or ``torchrun --standalone --nproc-per-node 2 train.py``)::

    import torch
    from torch import nn
    import conveyor

    def train(ctx):                           # once per rank, in its own process
        torch.manual_seed(0)                  # the same weights on every rank
        model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])
        pipe = conveyor.Pipeline(model, loss_fn=nn.functional.mse_loss,
                                 optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
                                 schedule="1f1b", microbatches=4, ctx=ctx)
        x, y = torch.randn(16, 32), torch.randn(16, 32)   # the same batch on every rank
        return [pipe.step(x, y).loss for _ in range(5)]

    if __name__ == "__main__":
        losses = conveyor.launch(train, nprocs=2)[0]      # every rank's result, in rank order
        if conveyor.is_driver():                          # print once under either launcher
            print(losses)

Main names: Pipeline, PipelineConfig, launch, LaunchOptions, is_driver,
CheckpointPolicy (the runtime, needs torch, imported on first use);
build_schedule, simulate, CostModel, validate (schedules and the simulator,
no torch). Each has its help(), e.g. ``help(conveyor.Pipeline)``. Guides:
https://github.com/conveyor-pp/conveyor/blob/main/docs/ (runtime.md, planning.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.errors import (
    ConveyorError, CostModelError, PartitionError, PipelineError, PlanError, ScheduleError,
    TimelineError, ValidationError,
)
from conveyor.schedule import (
    Action, Schedule, add_comms, build_schedule, load_schedule, save_schedule,
    schedule_names, validate,
)
from conveyor.sim import CostModel, Timeline, formula_bubble, load_timeline, simulate

__version__ = "0.1.0"
DOCS_URL = "https://github.com/conveyor-pp/conveyor/blob/main/docs/"

# Names that need torch: each is imported from here on first use, so that
# ``import conveyor`` stays torch-free (tests/test_core_without_torch.py).
_LAZY = {
    "Pipeline": "conveyor.runtime", "PipelineConfig": "conveyor.runtime",
    "StepResult": "conveyor.runtime", "launch": "conveyor.runtime",
    "LaunchOptions": "conveyor.runtime", "is_driver": "conveyor.runtime",
    "RankContext": "conveyor.runtime", "CheckpointPolicy": "conveyor.runtime",
    "export_state_dict": "conveyor.runtime", "RankFailedError": "conveyor.runtime",
    "StageError": "conveyor.runtime", "CheckpointError": "conveyor.runtime",
    "profile": "conveyor.measure.profile",
}

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names as plain imports (re-exported)
    from conveyor.measure.profile import profile as profile
    from conveyor.runtime import (
        CheckpointError as CheckpointError,
        CheckpointPolicy as CheckpointPolicy,
        LaunchOptions as LaunchOptions,
        Pipeline as Pipeline,
        PipelineConfig as PipelineConfig,
        RankContext as RankContext,
        RankFailedError as RankFailedError,
        StageError as StageError,
        StepResult as StepResult,
        export_state_dict as export_state_dict,
        is_driver as is_driver,
        launch as launch,
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    import importlib

    from conveyor.extras import MissingExtraError, require

    try:
        require(("torch",), f"conveyor.{name}")  # "conveyor.Pipeline needs torch: pip ..."
    except MissingExtraError as e:
        raise ModuleNotFoundError(str(e), name="torch") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The torch-free names: ``from conveyor import *`` must not import torch.
__all__ = [
    "Action", "Schedule", "CostModel", "Timeline",
    "build_schedule", "schedule_names", "validate", "add_comms", "simulate", "formula_bubble",
    "load_schedule", "save_schedule", "load_timeline",
    "ConveyorError", "ScheduleError", "ValidationError", "CostModelError", "TimelineError",
    "PartitionError", "PipelineError", "PlanError",
]
