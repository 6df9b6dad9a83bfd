"""The cost model: how long each action takes, how long data takes to cross a
cut, and (with data parallelism) how long each stage's gradient all-reduce takes.

Times are in any unit you like (slots for pictures, seconds for measured
costs); the simulator reports in the same unit. Each per-stage field is either
one number for every stage or a list with one number per stage; per-cut fields
likewise (cut c lies between stage c and c+1, so there are S-1 cuts).

With ``ranks_per_node`` set, ranks sit on nodes as the runtime places them
(global rank d*P + r, see ``conveyor.sim.dp``): a cut between ranks on one node
uses ``latency``/``bandwidth``, a cut across nodes ``inter_latency``/
``inter_bandwidth``, and so does each data-parallel all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence, Union

from conveyor.checks import check_int
from conveyor.errors import CostModelError
from conveyor.schedule.ir import B, F, I, KINDS, W, Action
from conveyor.sim.dp import crosses_nodes, group_spans_nodes, ring_allreduce_time

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
    latency:          fixed time of every transfer across a cut (within a node).
    bandwidth:        bytes per time unit on every link (within a node; inf: free).
    activation_bytes: bytes of one micro-batch's activation at each cut; its
                      gradient going back has the same size.
    dp:               data-parallel replicas (1: none, no all-reduce).
    ranks_per_node:   ranks (GPUs) per node; None: every rank on one node.
    inter_latency:    fixed time per transfer between nodes (None: ``latency``).
    inter_bandwidth:  bytes per time unit between nodes (None: ``bandwidth``).
    param_bytes:      bytes of each stage's gradients, all-reduced over dp.
    allreduce_overlap: start a stage's all-reduce as soon as its last backward
                      (B or W) on its rank ends; False: after the rank's
                      whole step.
    """

    forward: PerStage = 1.0
    backward: PerStage = 2.0
    input_grad: PerStage | None = None
    weight_grad: PerStage | None = None
    latency: float = 0.0
    bandwidth: float = math.inf
    activation_bytes: PerStage = 0.0
    dp: int = 1
    ranks_per_node: int | None = None
    inter_latency: float | None = None
    inter_bandwidth: float | None = None
    param_bytes: PerStage = 0.0
    allreduce_overlap: bool = True

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "input_grad", "weight_grad", "activation_bytes",
                     "param_bytes"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (list, tuple)):
                    object.__setattr__(self, name, tuple(value))
                _check(name, value)
        _check("latency", self.latency)
        _check("bandwidth", self.bandwidth, positive=True, allow_inf=True)
        check_int(self.dp, "cost dp", what="data-parallel replicas", error=CostModelError)
        if self.ranks_per_node is not None:
            check_int(self.ranks_per_node, "cost ranks_per_node", what="ranks on one node",
                      error=CostModelError)
        if self.inter_latency is not None:
            _check("inter_latency", self.inter_latency)
        if self.inter_bandwidth is not None:
            _check("inter_bandwidth", self.inter_bandwidth, positive=True, allow_inf=True)

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

        # The same times as a table the replay reads without a call per action.
        zero = [0.0] * S
        duration.table = {k: t.get(k, zero) for k in KINDS}
        return duration, (lambda cut: link[cut])

    # -- nodes and data parallelism ------------------------------------------
    def _inter(self) -> tuple[float, float]:
        lat = self.latency if self.inter_latency is None else self.inter_latency
        bw = self.bandwidth if self.inter_bandwidth is None else self.inter_bandwidth
        return lat, bw

    @property
    def multi_node(self) -> bool:
        """Whether ranks sit on several nodes with their own link costs."""
        return self.ranks_per_node is not None

    def cut_links(self, placement: Sequence[int], S: int, P: int | None = None) -> list[float]:
        """Time to cross each cut when ranks sit on nodes: the intra-node link
        time, or the inter-node one for a cut between nodes (any replica).
        P: pipeline ranks (default: the highest rank in ``placement`` + 1)."""
        nbytes = self._per("activation_bytes", max(S - 1, 0), "cuts")
        P = P or (max(placement) + 1 if len(placement) else 1)
        lat, bw = self._inter()
        out = []
        for c, x in enumerate(nbytes):
            if crosses_nodes(placement[c], placement[c + 1], P, self.dp, self.ranks_per_node):
                out.append(lat + (x / bw if x else 0.0))
            else:
                out.append(self.latency + (x / self.bandwidth if x else 0.0))
        return out

    def allreduce_inter(self, r: int, P: int) -> bool:
        """Whether rank r's data-parallel ring crosses nodes."""
        return group_spans_nodes(r, P, self.dp, self.ranks_per_node)

    def allreduce_times(self, placement: Sequence[int], S: int,
                        P: int | None = None) -> list[float]:
        """Per stage, its ring all-reduce time over dp replicas on the link its
        rank's data-parallel group needs (all 0 when dp is 1). P as in cut_links."""
        if self.dp <= 1:
            return [0.0] * S
        nbytes = self._per("param_bytes", S, "stages")
        P = P or max(placement) + 1
        out = []
        for s in range(S):
            lat, bw = self._inter() if self.allreduce_inter(placement[s], P) \
                else (self.latency, self.bandwidth)
            out.append(ring_allreduce_time(nbytes[s], self.dp, lat, bw))
        return out

    # -- files ---------------------------------------------------------------
    # Fields written only when they differ from these defaults, so a one-node,
    # dp = 1 model writes exactly the dict it wrote before they existed.
    _OPTIONAL = {"dp": 1, "ranks_per_node": None, "inter_latency": None,
                 "inter_bandwidth": None, "param_bytes": 0.0, "allreduce_overlap": True}

    def to_dict(self) -> dict:
        # Shallow: the fields are numbers and per-stage sequences (a subclass's
        # large per-micro-batch table is dropped by it, not deep-copied first).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["bandwidth"] = None if math.isinf(self.bandwidth) else self.bandwidth
        for k, default in self._OPTIONAL.items():
            if d.get(k) == default:
                d.pop(k, None)
        if self.inter_bandwidth is not None and math.isinf(self.inter_bandwidth):
            d["inter_bandwidth"] = "inf"  # JSON has no infinity; None means "as bandwidth"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        d = dict(d)
        if d.get("bandwidth") is None:
            d["bandwidth"] = math.inf
        if d.get("inter_bandwidth") == "inf":
            d["inter_bandwidth"] = math.inf
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CostModelError(f"unknown cost field(s) {sorted(unknown)}; "
                                 f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)
