"""The precision policy as the interpreter applies it: autocast around each
stage's forward, the dtype that crosses a cut between ranks, the loss in fp32.

A policy is resolved once from ``PipelineConfig`` (``resolve``) and is the
same on every rank (the agreement check covers the config):

- ``compute``: the dtype of autocast around every stage's forward (None: no
  autocast). Parameters stay as the model holds them, float32 for the mixed
  policies, so they are the master weights and their gradients are float32.
- ``boundary``: the dtype every floating tensor is sent in across a cut
  between ranks (activations forward, their gradients back). The receiver
  widens an activation back to the dtype the sender computed it in, so the
  next stage computes as the unsplit model would; the only change is the
  rounding at the cut. Tensors handed between stages on one rank are not cast
  (they cost no bytes). None: as computed.
- the loss is computed from the last stage's output widened to float32
  (``wide_output``), and the step's loss is summed in float64, as before.

Names: "fp32" (no autocast, boundary as computed), "bf16" (autocast and
boundary bfloat16), "fp16" (autocast and boundary float16, with dynamic loss
scaling: see ``conveyor.runtime.train.amp``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch

from conveyor.errors import PipelineError

__all__ = ["Policy", "resolve", "dtype_of", "PRESETS"]

_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp64": torch.float64, "float64": torch.float64}
PRESETS = ("fp32", "bf16", "fp16")
_LOW = (torch.bfloat16, torch.float16)
# Largest finite value. A boundary dtype must reach the compute dtype's binary
# order of magnitude (bf16 and fp32 share 8 exponent bits; fp16 has 5).
_RANGE = {dt: torch.finfo(dt).max for dt in
          (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _order(dt: torch.dtype) -> int:
    return int(math.log2(_RANGE[dt]))


def dtype_of(value, what: str) -> torch.dtype | None:
    """A floating dtype from a name ("bf16", "float32", ...) or a torch.dtype;
    None stays None. PipelineError for anything else."""
    if value is None or isinstance(value, torch.dtype) and value in _RANGE:
        return value
    if isinstance(value, str) and value.lower() in _NAMES:
        return _NAMES[value.lower()]
    raise PipelineError(f"{what}={value!r}; use one of 'fp32', 'bf16', 'fp16', 'fp64' (or the "
                        f"torch dtype), or None")


@dataclass(frozen=True)
class Policy:
    """A resolved precision policy (see the module docstring)."""

    name: str = "fp32"
    compute: torch.dtype | None = None
    boundary: torch.dtype | None = None
    device_type: str = "cpu"

    @property
    def mixed(self) -> bool:
        return self.compute is not None

    def autocast(self):
        """The context a stage's forward runs in."""
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    def wide_output(self, y):
        """The last stage's output for the loss: low-precision floating
        tensors widened to float32, so the loss and its reduction (a sum over
        thousands of tokens) are not rounded to 8 bits of mantissa."""
        if not self.mixed:
            return y
        if isinstance(y, torch.Tensor):
            return y.float() if y.dtype in _LOW else y
        if isinstance(y, (tuple, list)):
            return type(y)(self.wide_output(t) for t in y)
        return y


def resolve(precision, boundary_dtype, device: torch.device) -> Policy:
    """The Policy of ``PipelineConfig(precision=..., boundary_dtype=...)`` on
    ``device``. Raises PipelineError for an unknown name, a boundary dtype
    that cannot hold the activations, or a compute dtype this device or this
    torch cannot autocast to."""
    if precision not in PRESETS:
        raise PipelineError(f"precision={precision!r}; use 'fp32' (default), 'bf16' (bfloat16 "
                            f"compute under autocast, float32 master weights) or 'fp16' "
                            f"(float16 compute with dynamic loss scaling)")
    compute = None if precision == "fp32" else _NAMES[precision]
    boundary = dtype_of(boundary_dtype, "boundary_dtype")
    if boundary is None:
        boundary = compute
    widest = compute or torch.float32
    if boundary is not None and _order(boundary) < _order(widest):
        raise PipelineError(
            f"boundary_dtype={_short(boundary)} cannot hold {_short(widest)} activations: its "
            f"largest value is {_RANGE[boundary]:g}, theirs {_RANGE[widest]:.3g}, so larger "
            f"activations would arrive as inf; use {_short(widest)}, 'bf16' (same range as "
            f"float32, 8 bits of mantissa) or None (as computed)")
    if boundary is not None and compute is not None and \
            torch.finfo(boundary).eps > torch.finfo(compute).eps:
        raise PipelineError(
            f"boundary_dtype={_short(boundary)} keeps fewer bits than the {_short(compute)} "
            f"compute ({_mantissa(boundary)} against {_mantissa(compute)} bits of mantissa), so the cut would round away what the stage computed; use "
            f"{_short(compute)} or a wider dtype")
    if compute is not None:
        _check_autocast(device, compute, precision)
    return Policy(name=precision, compute=compute, boundary=boundary, device_type=device.type)


def _mantissa(dt: torch.dtype) -> int:
    return round(-math.log2(torch.finfo(dt).eps))


def _short(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _check_autocast(device: torch.device, dtype: torch.dtype, name: str) -> None:
    """Autocast to ``dtype`` must really happen here: torch only warns and
    turns it off when a device cannot, which would run fp32 under a bf16 name."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PipelineError(f"precision={name!r}: {torch.cuda.get_device_name(device)} has no "
                            f"bfloat16 support; use precision='fp16' (with loss scaling) there")
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device.type):
        raise PipelineError(f"precision={name!r} needs autocast, which torch {torch.__version__} "
                            f"does not offer on {device.type}; use precision='fp32'")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.autocast(device.type, dtype=dtype):
            on = torch.is_autocast_enabled(device.type) if _takes_device() else True
    if seen or not on:
        why = str(seen[0].message) if seen else "autocast stayed off"
        raise PipelineError(f"precision={name!r}: torch {torch.__version__} cannot autocast "
                            f"to {_short(dtype)} on {device.type} ({why}); use "
                            f"precision='fp32' or another precision this device supports")


def _takes_device() -> bool:
    try:
        torch.is_autocast_enabled("cpu")
        return True
    except TypeError:  # older torch: no device argument
        return False
