"""Emulated device time: layers that take a set wall time without using the CPU.

A GPU kernel occupies the device, not the host: while it runs, the host thread
waits and other processes get the CPU. These layers behave the same way. Each
does a cheap real operation (``y = x * w + b``, elementwise) and then sleeps
for the rest of its target time. Sleeping releases the GIL and the core, so
P = 8 stages fit on a 2-core machine and each still sees its own "device" time.
Tensors and gradients are real: the result is exactly ``x * w + b``, and the
backward gives the exact gradients of that (checked against autograd in the
tests).

The sleep is measured from the start of the operation, so the operation's own
CPU time is absorbed into the target instead of added to it. Under heavy CPU
contention a wake-up can be late; the benchmark measures that, it does not hide
it.

Split backward. With ``split_backward=True`` the layer builds two autograd
branches: one yields the input gradient (time ``input_grad``), the other the
weight and bias gradients (time ``weight_grad``). A full backward runs both
(``input_grad + weight_grad``); ``torch.autograd.grad(y, x)`` runs only the
first, as a zero-bubble runtime's I action would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from conveyor.checks import check_int
from conveyor.errors import PipelineError

__all__ = ["EmulatedTimes", "EmulatedLayer", "emulated_stages"]

_WAKE_LATE: list[float] = []  # seconds a sleep overshoots here, measured once


def _wake_late() -> float:
    """How late this process wakes from ``time.sleep``, measured once.

    The emulated device should take its configured time, not that plus the
    kernel's wake-up delay (about 0.1-0.2 ms on a loaded VM), so sleeps end
    that much early. On Linux the timer slack is also cut from 50 us to 1 us.
    """
    if not _WAKE_LATE:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 us
        except (OSError, AttributeError):
            pass
        late = []
        for _ in range(7):
            t = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)
        _WAKE_LATE.append(min(max(sorted(late)[3], 0.0), 0.0005))
    return _WAKE_LATE[0]


def _sleep_until(deadline: float) -> None:
    """Sleep (holding no core, no GIL) until about ``deadline`` (perf_counter s)."""
    left = deadline - time.perf_counter() - _wake_late()
    if left > 0:
        time.sleep(left)


@dataclass(frozen=True)
class EmulatedTimes:
    """Wall times of one emulated layer, per micro-batch, in seconds.

    forward:     time of the forward pass.
    backward:    time of the full backward pass (input and weight gradients).
    input_grad:  time of the input-gradient part when the backward is split;
                 defaults to half of ``backward``.
    weight_grad: time of the weight-gradient part when split; defaults to
                 ``backward - input_grad``.
    """

    forward: float = 0.02
    backward: float = 0.04
    input_grad: float | None = None
    weight_grad: float | None = None

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "input_grad", "weight_grad"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < 3600:
                raise PipelineError(f"emulated {name} time {value!r} s is not valid; "
                                 f"give seconds >= 0 and under an hour, e.g. {name}=0.02")

    def scaled(self, k: float) -> "EmulatedTimes":
        """These times multiplied by ``k`` (per-sample times -> one call's)."""
        i, w = self.split
        return EmulatedTimes(self.forward * k, self.backward * k, i * k, w * k)

    @property
    def split(self) -> tuple[float, float]:
        """(input_grad, weight_grad) seconds, with the defaults filled in."""
        i = self.backward / 2 if self.input_grad is None else self.input_grad
        w = self.backward - i if self.weight_grad is None else self.weight_grad
        if w < 0:
            raise PipelineError(f"input_grad {i} s exceeds backward {self.backward} s; "
                             f"set weight_grad explicitly or lower input_grad")
        return i, w


class _TimedAffine(torch.autograd.Function):
    """y = x * w + b taking ``fwd`` seconds; the whole backward takes ``bwd``."""

    @staticmethod
    def forward(ctx, x, w, b, fwd: float, bwd: float):
        t0 = time.perf_counter()
        y = torch.addcmul(b, x, w)  # b + x * w, one kernel
        ctx.save_for_backward(x, w)
        ctx.bwd = bwd
        _sleep_until(t0 + fwd)
        return y

    @staticmethod
    def backward(ctx, g):
        # Unpack first: under activation checkpointing that reruns the forward
        # (its own device time), which must not count towards this backward's.
        x, w = ctx.saved_tensors
        t0 = time.perf_counter()
        gx = g * w if ctx.needs_input_grad[0] else None
        gw = _sum_to(g * x, w) if ctx.needs_input_grad[1] else None
        gb = _sum_to(g, w) if ctx.needs_input_grad[2] else None
        _sleep_until(t0 + ctx.bwd)
        return gx, gw, gb, None, None


class _TimedInputBranch(torch.autograd.Function):
    """x * w_const + b_const: forward time here; its backward is the I part."""

    @staticmethod
    def forward(ctx, x, w_const, b_const, fwd: float, igrad: float):
        t0 = time.perf_counter()
        y = torch.addcmul(b_const, x, w_const)
        ctx.save_for_backward(w_const)
        ctx.igrad = igrad
        _sleep_until(t0 + fwd)
        return y

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors  # before the clock starts (see _TimedAffine)
        t0 = time.perf_counter()
        gx = g * w
        _sleep_until(t0 + ctx.igrad)
        return gx, None, None, None, None


class _TimedWeightBranch(torch.autograd.Function):
    """Zeros shaped like x whose backward yields the w and b gradients (the W part).

    Added to the input branch it changes no value but routes the weight
    gradients through a node of their own.
    """

    @staticmethod
    def forward(ctx, x_const, w, b, wgrad: float):
        ctx.save_for_backward(x_const, w)
        ctx.wgrad = wgrad
        return torch.zeros_like(x_const)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors  # before the clock starts (see _TimedAffine)
        t0 = time.perf_counter()
        gw = _sum_to(g * x, w)
        gb = _sum_to(g, w)
        _sleep_until(t0 + ctx.wgrad)
        return None, gw, gb, None


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # w and b have shape (width,), broadcast over the leading (batch) dims.
    return t.reshape(-1, like.shape[-1]).sum(0)


class EmulatedLayer(nn.Module):
    """An elementwise affine layer ``x * w + b`` with emulated device time.

    width:  features of x (its last dimension).
    times:  EmulatedTimes; forward and backward wall time per call.
    split_backward: route weight gradients through their own autograd node, so
            an input-only backward takes ``times.input_grad``.
    per_sample: ``times`` are per sample: a call on x of n rows (dim 0) takes n
            times them, as real compute on a micro-batch of n samples would.
    """

    def __init__(self, width: int, times: EmulatedTimes, *, split_backward: bool = False,
                 per_sample: bool = False):
        super().__init__()
        check_int(width, "emulated layer width", error=PipelineError)
        self.times = times
        self.split_backward = split_backward
        self.per_sample = per_sample
        # Weights near one keep activations from growing or vanishing over many layers.
        self.weight = nn.Parameter(1 + 0.01 * torch.randn(width))
        self.bias = nn.Parameter(0.01 * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.times.scaled(x.shape[0]) if self.per_sample else self.times
        if not self.split_backward:
            return _TimedAffine.apply(x, self.weight, self.bias, t.forward, t.backward)
        i, w = t.split
        y = _TimedInputBranch.apply(x, self.weight.detach(), self.bias.detach(), t.forward, i)
        return y + _TimedWeightBranch.apply(x.detach(), self.weight, self.bias, w)

    def extra_repr(self) -> str:
        t = self.times
        return (f"width={self.weight.numel()}, forward={t.forward}s, backward={t.backward}s"
                + (" per sample" if self.per_sample else "")
                + (", split" if self.split_backward else ""))


def emulated_stages(P: int, *, width: int, times: EmulatedTimes | list[EmulatedTimes],
                    layers_per_stage: int = 1, split_backward: bool = False,
                    per_sample: bool = False, seed: int = 0) -> list[nn.Sequential]:
    """P stage modules of emulated layers; stage s takes ``times[s]`` per micro-batch.

    ``times`` is one EmulatedTimes for all stages or a list with one per stage.
    A stage's time is divided evenly over its ``layers_per_stage`` layers.
    ``per_sample``: the times are per sample, so a micro-batch of n samples
    takes n times them (see EmulatedLayer).
    The same seed gives the same weights, so two frameworks train the same model.
    """
    check_int(P, "P", what="pipeline stages", error=PipelineError)
    per = list(times) if isinstance(times, (list, tuple)) else [times] * P
    if len(per) != P:
        raise PipelineError(f"{len(per)} stage times given for P={P} stages; give one per stage "
                         f"or a single EmulatedTimes for all")
    check_int(layers_per_stage, "layers_per_stage", error=PipelineError)
    torch.manual_seed(seed)
    k = layers_per_stage
    stages = []
    for t in per:
        i, w = t.split
        layer_t = EmulatedTimes(t.forward / k, t.backward / k, i / k, w / k)
        stages.append(nn.Sequential(*[EmulatedLayer(width, layer_t, split_backward=split_backward,
                                                    per_sample=per_sample)
                                      for _ in range(k)]))
    return stages
