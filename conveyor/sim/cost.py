"""The cost model: how long each action takes and how long data takes to cross a cut.

Times are in any unit you like (slots for pictures, seconds for measured
costs); the simulator reports in the same unit. Each per-stage field is either
one number for every stage or a list with one number per stage; per-cut fields
likewise (cut c lies between stage c and c+1, so there are S-1 cuts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence, Union

from conveyor.errors import CostModelError
from conveyor.schedule.ir import B, F, I, W, Action

__all__ = ["CostModel"]

Number = Union[int, float]
PerStage = Union[Number, Sequence[Number]]


def _check(name: str, value, *, positive: bool = False, allow_inf: bool = False) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for x in values:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool)
        if ok and math.isnan(x):
            ok = False
        if ok and math.isinf(x) and not allow_inf:
            ok = False
        if ok and (x <= 0 if positive else x < 0):
            ok = False
        if not ok:
            need = "a positive number" if positive else "a number >= 0"
            raise CostModelError(f"cost {name}={x!r} is not valid; give {need}"
                                 + (" (or inf)" if allow_inf else ""))


@dataclass(frozen=True)
class CostModel:
    """Per-stage compute times and per-cut link costs for the simulator.

    forward:          time of F on a stage, per micro-batch.
    backward:         time of a full backward B (input and weight gradients).
    input_grad:       time of I; defaults to half of ``backward``.
    weight_grad:      time of W; defaults to ``backward`` minus ``input_grad``.
    latency:          fixed time of every transfer across a cut.
    bandwidth:        bytes per time unit on every link (inf: free).
    activation_bytes: bytes of one micro-batch's activation at each cut; its
                      gradient going back has the same size.
    """

    forward: PerStage = 1.0
    backward: PerStage = 2.0
    input_grad: PerStage | None = None
    weight_grad: PerStage | None = None
    latency: float = 0.0
    bandwidth: float = math.inf
    activation_bytes: PerStage = 0.0

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "input_grad", "weight_grad", "activation_bytes"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (list, tuple)):
                    object.__setattr__(self, name, tuple(value))
                _check(name, value)
        _check("latency", self.latency)
        _check("bandwidth", self.bandwidth, positive=True, allow_inf=True)

    def _per(self, name: str, n: int, what: str) -> list[float]:
        value = getattr(self, name)
        if isinstance(value, tuple):
            if len(value) != n:
                raise CostModelError(
                    f"cost {name} has {len(value)} values but the schedule has {n} {what}; "
                    f"give one value per {what[:-1]} or a single number for all")
            return [float(x) for x in value]
        return [float(value)] * n

    def table(self, S: int) -> dict[str, list[float]]:
        """Resolve to per-stage lists ``{kind: [time of stage s]}`` and ``link``
        (time to cross each of the S-1 cuts)."""
        f = self._per("forward", S, "stages")
        b = self._per("backward", S, "stages")
        i = self._per("input_grad", S, "stages") if self.input_grad is not None \
            else [x / 2 for x in b]
        w = self._per("weight_grad", S, "stages") if self.weight_grad is not None \
            else [bb - ii for bb, ii in zip(b, i)]
        if any(x < 0 for x in w):
            raise CostModelError(f"weight_grad would be negative ({w}): input_grad exceeds "
                                 f"backward; set weight_grad explicitly")
        nbytes = self._per("activation_bytes", max(S - 1, 0), "cuts")
        link = [self.latency + (x / self.bandwidth if x else 0.0) for x in nbytes]
        return {F: f, B: b, I: i, W: w, "link": link}

    def duration_fn(self, S: int):
        """``(rank, action) -> time`` and ``cut -> link time`` for the replay."""
        t = self.table(S)
        link = t["link"]

        def duration(rank: int, a: Action) -> float:
            per = t.get(a.kind)
            return per[a.stage] if per is not None else 0.0

        return duration, (lambda cut: link[cut])

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["bandwidth"] = None if math.isinf(self.bandwidth) else self.bandwidth
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        d = dict(d)
        if d.get("bandwidth") is None:
            d["bandwidth"] = math.inf
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CostModelError(f"unknown cost field(s) {sorted(unknown)}; "
                                 f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)
