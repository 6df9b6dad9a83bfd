"""The profile: what one layer costs, as measured by ``conveyor.profile``.

Torch-free: the profiler (``conveyor.measure.profile``) writes it, the planner
and the partition solver read it. Schema ``conveyor.profile/1`` (documented in
https://github.com/conveyor-pp/conveyor/blob/main/docs/planning.md):

    format      "conveyor.profile/1"
    model       {"name", "layers": L, "fingerprint"}: which model was measured
    batch       the sample batch sizes measured, e.g. [16, 8, 4]
    device      where it ran ("cpu", "cuda:0", ...)
    repeats     timed calls per measurement (median taken after warm-up)
    meta        free-form facts: torch version, optimizer, "loss_bytes", and
                "timing": "in context" (forward and backward timed as a stage
                runs its layers, the default) or "alone" (each layer alone)
    input_bytes bytes per sample of the model's input (the cut before layer 0)
    layers      one object per layer, in order:
        name, kind         the layer's index/name and class
        forward, backward, input_grad, weight_grad
                           seconds per micro-batch of n samples, as
                           {"fixed": a, "per_sample": b}: time = a + b * n
        out_bytes          bytes per sample of the layer's output (cut after it)
        saved_bytes        bytes per sample saved for backward, other than the
                           layer's input (saved_tensors_hooks, unique storages)
        saves_input        whether it saves its input (then, inside a stage,
                           the previous layer's output stays alive)
        saves_output       whether the saved tensors include the output
        param_bytes        bytes of the layer's parameters
        optim_bytes        bytes of optimizer state (2x params for Adam)
        w_out_bytes        bytes per sample a split backward keeps from I for W
                           that are the layer's output gradient (0 if none)
        w_bytes            bytes per sample of the other gradients it keeps
                           from I for W (inner nodes with weights); both
                           optional, 0 in profiles written before them
        w_calls            backward calls a split backward's W makes for this
                           layer (one per group of weights, see splitgrad);
                           optional: 1 for a layer with parameters, else 0
    links       {"latency": s, "bandwidth": bytes/s} or null (free links); with
                "send" and "recv" ({"fixed": s, "per_byte": s}, optional):
                the runtime's own time per send and receive across ranks
    overhead    seconds the runtime adds to every action (F, B, I, W) beyond the
                layers' compute: dispatch, posting and waiting on its sends and
                receives, shape handshakes. Optional: 0 in profiles written
                before it or without ``--links`` (see ``measure_links``)
    loss        {"forward": {"fixed", "per_sample"}, "backward": {...}}: the
                loss function's time on the model's output (its forward, and
                its backward down to the output), which the last stage pays;
                null (or absent, in older profiles) when profiled without one
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conveyor.errors import PlanError
from conveyor.userfiles import read_json

__all__ = ["Affine", "LayerProfile", "LossProfile", "Profile", "load_profile", "FORMAT"]

FORMAT = "conveyor.profile/1"


@dataclass(frozen=True)
class Affine:
    """A time that grows with the micro-batch: ``fixed + per_sample * n`` seconds."""

    fixed: float = 0.0
    per_sample: float = 0.0

    def at(self, n: float) -> float:
        return self.fixed + self.per_sample * n

    @classmethod
    def fit(cls, points) -> "Affine":
        """Least squares through ``[(n, seconds), ...]``; clamped so neither part
        is negative (timing noise can tilt the line)."""
        pts = [(float(n), float(t)) for n, t in points]
        k = len(pts)
        mean_n = sum(n for n, _ in pts) / k
        mean_t = sum(t for _, t in pts) / k
        var = sum((n - mean_n) ** 2 for n, _ in pts)
        if var == 0:
            return cls(0.0, max(mean_t, 0.0) / mean_n)
        b = sum((n - mean_n) * (t - mean_t) for n, t in pts) / var
        b = max(b, 0.0)
        a = mean_t - b * mean_n
        if a < 0:  # through the origin instead
            a, b = 0.0, max(sum(n * t for n, t in pts) / sum(n * n for n, _ in pts), 0.0)
        return cls(a, b)


@dataclass(frozen=True)
class LayerProfile:
    """One layer's costs (see the module docstring for each field)."""

    name: str
    kind: str
    forward: Affine
    backward: Affine
    input_grad: Affine
    weight_grad: Affine
    out_bytes: float
    saved_bytes: float
    saves_output: bool
    param_bytes: int
    optim_bytes: int
    saves_input: bool = False
    w_out_bytes: float = 0.0
    w_bytes: float = 0.0
    w_calls: int | None = None

    @property
    def w_backward_calls(self) -> int:
        """``w_calls``, or 1 for a layer with parameters where not measured."""
        if self.w_calls is not None:
            return self.w_calls
        return 1 if self.param_bytes > 0 else 0

    @property
    def static_bytes(self) -> int:
        """Parameters, their gradients and the optimizer state: what training
        holds for the layer whatever the schedule."""
        return 2 * self.param_bytes + self.optim_bytes


@dataclass(frozen=True)
class LossProfile:
    """The loss function's seconds per micro-batch: its forward on the model's
    output, and its backward down to that output."""

    forward: Affine
    backward: Affine


@dataclass
class Profile:
    """Per-layer costs of one model on one device, and the links between ranks."""

    model: dict
    layers: list[LayerProfile]
    input_bytes: float
    batch: list[int] = field(default_factory=list)
    device: str = "cpu"
    repeats: int = 0
    links: dict | None = None
    meta: dict = field(default_factory=dict)
    overhead: float = 0.0
    loss: LossProfile | None = None

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def latency(self) -> float:
        return float((self.links or {}).get("latency") or 0.0)

    @property
    def host_transfers(self) -> dict | None:
        """The runtime's own time per send and receive, ``{"send": {"fixed",
        "per_byte"}, "recv": ...}``, where ``measure_links`` measured it."""
        links = self.links or {}
        if links.get("send") is None or links.get("recv") is None:
            return None
        return {"send": links["send"], "recv": links["recv"]}

    @property
    def bandwidth(self) -> float:
        bw = (self.links or {}).get("bandwidth")
        return float(bw) if bw else float("inf")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "batch": self.batch,
                "device": self.device, "repeats": self.repeats,
                "input_bytes": self.input_bytes, "links": self.links, "overhead": self.overhead,
                "meta": self.meta, "loss": None if self.loss is None else asdict(self.loss),
                "layers": [asdict(lay) for lay in self.layers]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "profile") -> "Profile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise PlanError(f"{source} is not a conveyor profile (format {got!r}, expected "
                            f"{FORMAT!r}); write one with `conveyor profile`")
        try:
            layers = [LayerProfile(
                name=str(x["name"]), kind=str(x["kind"]),
                **{k: Affine(**x[k]) for k in ("forward", "backward", "input_grad",
                                                "weight_grad")},
                out_bytes=float(x["out_bytes"]), saved_bytes=float(x["saved_bytes"]),
                saves_output=bool(x["saves_output"]), param_bytes=int(x["param_bytes"]),
                optim_bytes=int(x["optim_bytes"]), saves_input=bool(x.get("saves_input")),
                w_out_bytes=float(x.get("w_out_bytes", 0.0)), w_bytes=float(x.get("w_bytes", 0.0)),
                w_calls=None if x.get("w_calls") is None else int(x["w_calls"]))
                for x in d["layers"]]
            prof = cls(model=dict(d["model"]), layers=layers,
                       input_bytes=float(d["input_bytes"]), batch=list(d.get("batch", [])),
                       device=str(d.get("device", "cpu")), repeats=int(d.get("repeats", 0)),
                       links=d.get("links"), meta=dict(d.get("meta") or {}),
                       overhead=float(d.get("overhead") or 0.0),
                       loss=None if d.get("loss") is None else LossProfile(
                           Affine(**d["loss"]["forward"]), Affine(**d["loss"]["backward"])))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{source}: malformed profile ({type(e).__name__}: {e}); "
                            f"re-run `conveyor profile`") from None
        _check_values(source, d, prof)
        for key in ("send", "recv"):
            _check_host(source, key, (prof.links or {}).get(key))
        if not 0 <= prof.overhead < float("inf"):  # also rejects NaN
            raise PlanError(f"{source}: overhead {prof.overhead!r} is not a time >= 0 s; "
                            f"re-run `conveyor profile --links`")
        if not layers or prof.model.get("layers") != len(layers):
            raise PlanError(f"{source}: model has {prof.model.get('layers')} layers but the "
                            f"profile lists {len(layers)}; re-run `conveyor profile`")
        return prof


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")


def _check_values(source: str, d: dict, prof: "Profile") -> None:
    """What the constructors above let through but the planner cannot use:
    ``batch`` not a list of sample counts (a string would be read letter by
    letter), times that are not numbers >= 0."""
    batch = d.get("batch", [])
    if not isinstance(batch, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in batch):
        raise PlanError(f"{source}: batch is {batch!r}; it must be a list of the sample counts "
                        f"measured, e.g. [16, 8, 4]; re-run `conveyor profile`")
    timed = [(lay.name, k, getattr(lay, k)) for lay in prof.layers
             for k in ("forward", "backward", "input_grad", "weight_grad")]
    if prof.loss is not None:
        timed += [("loss", "forward", prof.loss.forward), ("loss", "backward", prof.loss.backward)]
    for name, k, a in timed:
        if not (_number(a.fixed) and _number(a.per_sample)):
            raise PlanError(f"{source}: layer {name!r} {k} is {{'fixed': {a.fixed!r}, "
                            f"'per_sample': {a.per_sample!r}}}; times must be numbers >= 0 "
                            f"(seconds); re-run `conveyor profile`")


def _check_host(source: str, key: str, value) -> None:
    """``links[key]``: None, or {"fixed": s, "per_byte": s}, both finite >= 0."""
    if value is None:
        return
    ok = isinstance(value, dict) and all(
        isinstance(value.get(k), (int, float)) and not isinstance(value.get(k), bool)
        and 0 <= value[k] < float("inf") for k in ("fixed", "per_byte"))
    if not ok:
        raise PlanError(f"{source}: links {key!r} is {value!r}, not {{'fixed': s, 'per_byte': "
                        f"s}} with times >= 0; re-run `conveyor profile --links`")


def load_profile(path: str | Path) -> Profile:
    """Read a profile JSON file; PlanError when it is not one."""
    path = Path(path)
    data = read_json(path, what="profile", error=PlanError,
                     fix="pass the profile file `conveyor profile` wrote")
    return Profile.from_dict(data, source=repr(str(path)))
