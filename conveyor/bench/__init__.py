"""Benchmarks of the pipeline runtime against torch.distributed.pipelining.

``conveyor.bench.config`` is torch-free (the CLI parses into it); the other
modules import torch and are loaded only when a benchmark runs.
"""

from conveyor.bench.config import (
    FRAMEWORKS, BenchError, Case, EmulatedWorkload, MLPWorkload, RunSettings,
)

__all__ = ["FRAMEWORKS", "BenchError", "Case", "EmulatedWorkload", "MLPWorkload",
           "RunSettings"]
