"""conveyor's runtime behind the benchmark's runner interface."""

from __future__ import annotations

import torch
from torch import nn

from conveyor.bench.frameworks import Unsupported

__all__ = ["ConveyorRunner"]


class ConveyorRunner:
    """Placeholder until the runtime (issue 3) is merged."""

    def __init__(self, module: nn.Module, *, rank: int, P: int, schedule: str, M: int,
                 device: torch.device):
        raise Unsupported("conveyor's runtime is not available on this branch yet")
