"""The plan file: what the planner chose, in a form the runtime and the views read.

Schema ``conveyor.plan/1``. It is also a conveyor schedule file: the keys
``name``, ``P``, ``M``, ``placement`` and ``actions`` are the chosen schedule
(``conveyor simulate --file plan.json`` reads it as one; ``conveyor viz --plan
plan.json`` draws it with its costs). The plan's own keys:

    format        "conveyor.plan/1"
    model         the profile's model identity (name, layers, fingerprint)
    batch         samples per step; microbatch_sizes: their split over M
    balance       layers per stage (S entries)
    checkpoint    per stage, whether its activations are recomputed
    shard_optimizer  whether the plan shards the optimizer state over the
                  data-parallel replicas (run it with that PipelineConfig);
                  optional, false in plans written before it
    memory_budget bytes per rank the plan was made for (null: none)
    predicted     {"step_s", "bubble", "peak_bytes": per rank}
    costs         what the prediction was simulated with: "sizes" (the distinct
                  micro-batch sizes, largest first), "F", "B", "I", "W" (per
                  stage, seconds at each of those sizes), "latency" (s),
                  "bandwidth" (bytes/s, null: free), "cut_bytes" (per cut, the
                  largest micro-batch's); ``Plan.cost_model()`` rebuilds it
"""

from __future__ import annotations

import json
from pathlib import Path

from conveyor.deprecation import renamed
from conveyor.errors import PlanError
from conveyor.schedule.io import schedule_from_dict, schedule_to_dict
from conveyor.schedule.ir import Schedule
from conveyor.userfiles import read_json

__all__ = ["FORMAT", "plan_to_dict", "save_plan", "load_plan", "Plan"]

FORMAT = "conveyor.plan/1"


class Plan:
    """A loaded plan: the schedule plus the cut and the checkpointing."""

    def __init__(self, data: dict, schedule: Schedule):
        self.data = data
        self.schedule = schedule
        self.model = dict(data["model"])
        self.batch = int(data["batch"])
        self.balance = [int(x) for x in data["balance"]]
        self.checkpoint = [bool(x) for x in data["checkpoint"]]
        self.predicted = dict(data.get("predicted") or {})
        self.shard_optimizer = bool(data.get("shard_optimizer", False))

    def check_model(self, L: int, fingerprint: str | None) -> None:
        """PlanError unless the plan was made for a model of L layers with this fingerprint."""
        want_L, want_fp = self.model.get("layers"), self.model.get("fingerprint")
        if want_L != L or (fingerprint and want_fp and fingerprint != want_fp):
            raise PlanError(
                f"the plan (and its profile) is for another model: {self.model.get('name')!r} "
                f"with {want_L} layers, fingerprint {want_fp}; this model has {L} layers, "
                f"fingerprint {fingerprint}. Profile this model (`conveyor profile`) and plan "
                f"again")


    def cost_model(self):
        """The MicrobatchCostModel the planner simulated this plan with.
        PlanError for a plan written before plans kept their costs."""
        from conveyor.plan.costs import MicrobatchCostModel
        from conveyor.schedule.ir import B, F, I, W

        c = self.data.get("costs")
        if not isinstance(c, dict):
            raise PlanError("this plan holds no costs (written by an older conveyor); run "
                            "`conveyor plan` again")
        try:
            col = {int(n): k for k, n in enumerate(c["sizes"])}
            sizes = [int(n) for n in self.data["microbatch_sizes"]]
            table = {kind: [[row[col[n]] for n in sizes] for row in c[key]]
                     for kind, key in ((F, "F"), (B, "B"), (I, "I"), (W, "W"))}
            bw = c.get("bandwidth")
            return MicrobatchCostModel(
                forward=_means(table[F]), backward=_means(table[B]),
                input_grad=_means(table[I]), weight_grad=_means(table[W]),
                latency=float(c.get("latency") or 0.0),
                bandwidth=float(bw) if bw else float("inf"),
                activation_bytes=[float(x) for x in c.get("cut_bytes", [])], per_mb=table)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PlanError(f"malformed costs in the plan ({type(e).__name__}: {e}); run "
                            f"`conveyor plan` again") from None


def _means(rows) -> list[float]:
    return [sum(r) / len(r) for r in rows]


def _costs(sc, profile) -> dict:
    """The plan's ``costs`` entry from a candidate's StageCosts."""
    distinct = sorted(set(sc.sizes), reverse=True)
    first = {n: sc.sizes.index(n) for n in distinct}  # a micro-batch of each size

    def at(rows):
        return [[row[first[n]] for n in distinct] for row in rows]

    return {"sizes": distinct, "F": at(sc.forward), "B": at(sc.backward),
            "I": at(sc.input_grad), "W": at(sc.weight_grad), "latency": profile.latency,
            "bandwidth": None if profile.bandwidth == float("inf") else profile.bandwidth,
            "cut_bytes": [c * max(sc.sizes) for c in sc.cut_per_sample]}


@renamed(batch="batch_size")
def plan_to_dict(cand, profile, *, batch_size: int, budget: float | None) -> dict:
    """The plan file's dict for candidate ``cand`` (``search(...).best``) of
    ``profile``, for ``batch_size`` samples per step and ``budget`` bytes per
    rank (None: unlimited); write it with ``save_plan``."""
    d = schedule_to_dict(cand.schedule)
    d.update({"format": FORMAT, "model": profile.model, "batch": batch_size,
              "microbatch_sizes": list(cand.sizes), "balance": list(cand.balance),
              "checkpoint": list(cand.checkpoint), "memory_budget": budget,
              "shard_optimizer": bool(cand.shard),
              "predicted": {"step_s": cand.step, "bubble": cand.bubble,
                            "peak_bytes": list(cand.peak_bytes)}})
    if cand._costs is not None:
        d["costs"] = _costs(cand._costs, profile)
    return d


def save_plan(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=1))
    return path


def load_plan(path_or_dict) -> Plan:
    """Read a plan (a path or an already-parsed dict); PlanError when it is not one."""
    if isinstance(path_or_dict, dict):
        data, source = path_or_dict, "plan"
    else:
        source = repr(str(path_or_dict))
        data = read_json(path_or_dict, what="plan", error=PlanError,
                         fix="pass the plan file `conveyor plan` wrote")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanError(f"{source} is not a conveyor plan (expected format {FORMAT!r}); "
                        f"write one with `conveyor plan`")
    sched = schedule_from_dict(data, source=source)
    try:
        plan = Plan(data, sched)
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{source}: malformed plan ({type(e).__name__}: {e})") from None
    if len(plan.balance) != sched.S or len(plan.checkpoint) != sched.S:
        raise PlanError(f"{source}: balance has {len(plan.balance)} and checkpoint "
                        f"{len(plan.checkpoint)} entries but the schedule has {sched.S} stages")
    return plan
