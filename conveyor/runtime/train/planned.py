"""What ``Pipeline`` takes from a plan or a profile: the cut and the checkpointing.

``balance="time"`` cuts the model so the slowest stage is as fast as it can be
(forward + backward per layer from a profile); ``balance="memory"`` so the
fullest stage holds as little as it can (parameters, optimizer state and one
micro-batch's saved activations per layer). ``plan=`` takes the schedule, the
balance and the checkpointing from a plan file and checks that the plan was
made for this model.
"""

from __future__ import annotations

from conveyor.errors import PipelineError, PlanError
from conveyor.partition import balanced_partition, placed_partition
from conveyor.plan import Profile, load_plan, load_profile
from conveyor.plan.costs import backward_times
from conveyor.runtime.execute.stages import fingerprint, layers_of

__all__ = ["named_balance", "from_plan"]


def _profile_for(model, profile) -> Profile:
    if profile is None:
        raise PipelineError("balance='time' or 'memory' needs per-layer costs: pass "
                            "profile='profile.json' (from `conveyor profile`) or a Profile")
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    L, fp = len(layers_of(model)), fingerprint(model)
    if prof.L != L or prof.model.get("fingerprint") not in (None, fp):
        raise PlanError(
            f"the profile is of another model: {prof.model.get('name')!r} with {prof.L} layers, "
            f"fingerprint {prof.model.get('fingerprint')}; this model has {L} layers, "
            f"fingerprint {fp}. Profile this model (`conveyor profile`)")
    return prof


def named_balance(balance, model, S: int, profile=None, batch: int | None = None,
                  placement=None):
    """``balance`` as layer counts: "time" and "memory" solved from ``profile``
    (at micro-batch size ``batch`` or the profile's batch), anything else as given.

    ``placement`` (stage -> rank, S entries): where a rank holds several
    stages, the cut minimises the largest rank total instead of the largest
    stage (``placed_partition``); None: one stage per rank."""
    if balance not in ("time", "memory"):
        return balance
    prof = _profile_for(model, profile)
    n = batch or prof.batch[0]
    if balance == "time":  # layer 0 needs no input gradient (see backward_times)
        back = backward_times(prof.layers[:1], n, True) + [x.backward.at(n)
                                                          for x in prof.layers[1:]]
        costs = [x.forward.at(n) + b for x, b in zip(prof.layers, back)]
    else:
        costs = [x.static_bytes + x.saved_bytes * n for x in prof.layers]
    if placement is not None and len(set(placement)) < len(placement):
        if len(placement) != S:
            raise PipelineError(f"placement {list(placement)} has {len(placement)} entries for "
                                f"{S} stages; give one rank per stage")
        return placed_partition(costs, placement)[0]
    return balanced_partition(costs, S, what=balance)


def from_plan(plan, model, config=None):
    """(schedule, balance, checkpoint flags) of a plan file or dict, after
    checking it belongs to ``model`` and, when the plan shards the optimizer
    state, that ``config`` does too (PlanError otherwise: the plan fits its
    budget only so)."""
    p = load_plan(plan)
    p.check_model(len(layers_of(model)), fingerprint(model))
    if p.shard_optimizer and not getattr(config, "shard_optimizer", False):
        raise PlanError("the plan shards the optimizer state over the data-parallel replicas "
                        "(it fits its memory budget only so); build the pipeline with dp=N "
                        "and config=PipelineConfig(shard_optimizer=True)")
    return p.schedule, p.balance, p.checkpoint
