"""Benchmark configuration: workloads, cases and run settings (no torch here).

The CLI builds these from its arguments before torch is imported, so a bad
value fails fast with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.checks import check_int
from conveyor.errors import ConveyorError

__all__ = ["BenchError", "Unsupported", "EmulatedWorkload", "MLPWorkload", "Case",
           "RunSettings", "FRAMEWORKS", "LR"]

FRAMEWORKS = ("conveyor", "torch")
LR = 1e-3  # small: the benchmark trains, but only to exercise the optimizer


class BenchError(ConveyorError, ValueError):
    """A benchmark is configured with values it cannot run, or a run failed."""


class Unsupported(BenchError):
    """The framework cannot run this case (e.g. torch's 1F1B with M < P)."""


def _count(name: str, value, at_least: int = 1) -> None:
    check_int(value, name, at_least=at_least, error=BenchError)


def _seconds(name: str, value, *, zero_ok: bool) -> None:
    """BenchError unless ``value`` is a number of seconds > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value >= 0 if zero_ok else value > 0)
    if not ok:
        raise BenchError(f"{name}={value!r} is not valid; give seconds "
                         f"{'>= 0' if zero_ok else '> 0'}")


@dataclass(frozen=True)
class EmulatedWorkload:
    """Stages of emulated device time: fixed wall times, almost no CPU.

    forward:          seconds of one stage's forward, per micro-batch.
    backward:         seconds of one stage's full backward, per micro-batch.
    width:            features per sample; an activation is (mb_size, width) float32.
    mb_size:          samples per micro-batch (the batch is M * mb_size).
    layers_per_stage: emulated layers per stage; the stage's time is split evenly.
    split_backward:   the backward sleeps in two parts, I (input gradient,
                      ``input_grad`` seconds) and W (weight gradient, the rest
                      of ``backward``), so zero-bubble schedules can defer W
                      as they would on a GPU.
    input_grad:       seconds of I when split; None: half of ``backward``.

    Times are a rank's per micro-batch: a schedule with v stages per rank
    gives each stage 1/v of them, so every schedule does the same work.
    """

    forward: float = 0.02
    backward: float = 0.04
    width: int = 4096
    mb_size: int = 8
    layers_per_stage: int = 1
    split_backward: bool = False
    input_grad: float | None = None
    kind: str = field(default="emulated", init=False)

    def __post_init__(self) -> None:
        _seconds("forward", self.forward, zero_ok=True)
        _seconds("backward", self.backward, zero_ok=True)
        if self.input_grad is not None:
            _seconds("input_grad", self.input_grad, zero_ok=True)
            if self.input_grad > self.backward:
                raise BenchError(f"input_grad={self.input_grad} s exceeds backward="
                                 f"{self.backward} s; I is part of the backward")
        for name in ("width", "mb_size", "layers_per_stage"):
            _count(name, getattr(self, name))

    def batch_size(self, M: int) -> int:
        """Samples per step: M micro-batches of ``mb_size``."""
        return M * self.mb_size

    def activation_bytes(self, M: int) -> int:
        """Bytes of one micro-batch's activation at a cut (float32)."""
        return self.mb_size * self.width * 4


@dataclass(frozen=True)
class MLPWorkload:
    """A deep MLP doing real compute, one thread per rank.

    layers:  Linear+ReLU blocks (L); split evenly over the P stages.
    width:   features of every hidden layer.
    batch:   samples per step, split into M micro-batches.
    threads: torch intra-op threads per rank (1: one core per stage).
    """

    layers: int = 16
    width: int = 384
    batch: int = 4096
    threads: int = 1
    kind: str = field(default="mlp", init=False)

    def __post_init__(self) -> None:
        for name in ("layers", "width", "batch", "threads"):
            _count(name, getattr(self, name))

    def batch_size(self, M: int) -> int:
        """Samples per step, whatever M."""
        return self.batch

    def activation_bytes(self, M: int) -> int:
        """Bytes of one micro-batch's activation at a cut (float32)."""
        if self.batch % M:
            raise BenchError(f"batch {self.batch} does not split into M={M} equal "
                             f"micro-batches; pick a batch divisible by M")
        return self.batch // M * self.width * 4


@dataclass(frozen=True)
class Case:
    """One point of the benchmark grid.

    schedule: schedule name (gpipe, 1f1b).
    P:        pipeline stages, one process each.
    M:        micro-batches per step.
    """

    schedule: str
    P: int
    M: int

    def __str__(self) -> str:
        return f"{self.schedule} P={self.P} M={self.M}"


@dataclass(frozen=True)
class RunSettings:
    """How each case is measured.

    repeats:    timed steps per framework; medians are reported.
    warmup:     untimed steps first (shape handshakes, allocator warm-up).
    frameworks: which implementations run, alternating step by step
                (``FRAMEWORKS``, or ``conveyor-no-<source>``: see switches.py).
    timeout:    seconds before a run of one process group is declared hung.
    memory:     also measure RSS per step, in processes of their own (see
                ``worker.measure_memory``); without it RSS comes from the
                timed steps, where freed memory stays in the allocator.
    """

    repeats: int = 5
    warmup: int = 2
    frameworks: tuple[str, ...] = FRAMEWORKS
    timeout: float = 900.0
    memory: bool = True

    def __post_init__(self) -> None:
        _count("repeats", self.repeats)
        _count("warmup", self.warmup, at_least=0)
        _seconds("timeout", self.timeout, zero_ok=False)
        from .switches import PREFIX, SOURCES, variant_sources

        bad = [f for f in self.frameworks if f not in FRAMEWORKS and variant_sources(f) is None]
        if bad or not self.frameworks:
            raise BenchError(f"unknown framework(s) {bad or self.frameworks!r}; "
                             f"choose from {', '.join(FRAMEWORKS)}, or conveyor with one "
                             f"source of overhead off: "
                             f"{', '.join(PREFIX + s for s in SOURCES + ('all',))}")
