"""Discrete-event simulation of a schedule under a cost model.

Every rank runs its action list in order (the same replay the validator uses),
so the predicted timeline follows the exact order the runtime executes. Links
are modelled as a fixed delay per transfer (latency + bytes / bandwidth), with
no contention: each cut is a separate point-to-point link, and a rank's sends
overlap its compute, as the runtime's asynchronous sends do.

With data parallelism (``CostModel.dp`` > 1) every replica runs the same
schedule on its slice of the batch, so one replica is simulated and each
rank's gradient all-reduces are added after it (``conveyor.sim.dp``): they
start when the stage's last backward ends (or the rank's step, without
overlap), run beside the rank's remaining work, and the step ends when the
last of them ends.
"""

from __future__ import annotations

from fractions import Fraction

from conveyor.errors import ValidationError
from conveyor.schedule.deps import paused_gc, replay
from conveyor.schedule.generators import get_spec
from conveyor.schedule.ir import Schedule
from conveyor.schedule.validate import checked_replay
from conveyor.sim.cost import CostModel
from conveyor.sim.dp import schedule_allreduces
from conveyor.sim.timeline import Event, Timeline

__all__ = ["simulate", "formula_bubble"]


def simulate(schedule: Schedule, costs: CostModel | None = None, *,
             check: bool = True, unit: str = "slot") -> Timeline:
    """Predict the timeline of one step of ``schedule`` under ``costs``.

    Returns a Timeline with ``source="simulated"``. With ``check`` (default) the
    schedule is validated first, so a broken schedule raises ValidationError
    with its grid rather than a partial timeline.
    """
    costs = costs or CostModel()
    duration, link = costs.duration_fn(schedule.S)
    if costs.multi_node:
        link = costs.cut_links(schedule.placement, schedule.S, schedule.P).__getitem__
    if check:
        result = checked_replay(schedule, lambda: replay(schedule, duration, link))
    else:
        result = replay(schedule, duration, link)
    if result.stuck:  # only reachable with check=False
        r, (step, a, dep) = min(result.stuck.items())
        raise ValidationError(f"schedule {schedule.name!r} cannot finish: rank {r} waits at "
                              f"step {step} ({a}) for {dep}", rank=r, step=step, action=a)
    place = schedule.placement
    new = tuple.__new__  # Event(...) without its Python-level __new__: 100k+ events
    with paused_gc():
        events = [new(Event, (place[a[0]], a, t0, t1))
                  for a, t0, t1 in zip(result.order, result.starts, result.ends)]
    meta = {"costs": costs.to_dict()}
    collectives = []
    if costs.dp > 1 and not schedule.forward_only:
        collectives, meta["allreduce"] = _allreduce(schedule, costs, result.end_of)
    return Timeline(P=schedule.P, M=schedule.M, S=schedule.S, schedule=schedule.name,
                    events=events, source="simulated", unit=unit,
                    forward_only=schedule.forward_only, meta=meta, collectives=collectives)


def _allreduce(schedule: Schedule, costs: CostModel, end_of):
    """The all-reduces under ``costs`` and their summary for ``meta``:
    per-stage times, which ranks' rings cross nodes, and the step's end with
    the all-reduces overlapped and after the step, for the overlap's saving."""
    times = costs.allreduce_times(schedule.placement, schedule.S, schedule.P)
    ends = {}
    for overlap in (True, False):
        ends[overlap] = schedule_allreduces(schedule.actions, end_of, schedule.placement, times,
                                            overlap)
    pipeline_end = max((end_of(row[-1]) for row in schedule.actions if row), default=0.0)
    step = {k: max([c.end for c in v], default=0.0) for k, v in ends.items()}
    summary = {"dp": costs.dp, "overlap": costs.allreduce_overlap, "stage_time": times,
               "inter_node": [costs.allreduce_inter(r, schedule.P) for r in range(schedule.P)],
               "pipeline_end": pipeline_end,
               "end_overlapped": max(step[True], pipeline_end),
               "end_after_step": max(step[False], pipeline_end)}
    return ends[costs.allreduce_overlap], summary


def formula_bubble(name: str, P: int, M: int) -> Fraction | None:
    """The closed-form bubble fraction of schedule ``name``, or None if it has none.

    Valid under equal per-stage costs and free links; reported beside the
    simulated value, which holds under any cost model.
    """
    spec = get_spec(name)
    if spec.bubble is None:
        return None
    return spec.bubble(P, 1 if name == "naive" else M)
