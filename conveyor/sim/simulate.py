"""Discrete-event simulation of a schedule under a cost model.

Every rank runs its action list in order (the same replay the validator uses),
so the predicted timeline follows the exact order the runtime executes. Links
are modelled as a fixed delay per transfer (latency + bytes / bandwidth), with
no contention: each cut is a separate point-to-point link, and a rank's sends
overlap its compute, as the runtime's asynchronous sends do.
"""

from __future__ import annotations

from fractions import Fraction

from conveyor.errors import ValidationError
from conveyor.schedule.deps import paused_gc, replay
from conveyor.schedule.generators import get_spec
from conveyor.schedule.ir import Schedule
from conveyor.schedule.validate import checked_replay
from conveyor.sim.cost import CostModel
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
    if check:
        result = checked_replay(schedule, lambda: replay(schedule, duration, link))
    else:
        result = replay(schedule, duration, link)
    if result.stuck:  # only reachable with check=False
        r, (step, a, dep) = min(result.stuck.items())
        raise ValidationError(f"schedule {schedule.name!r} cannot finish: rank {r} waits at "
                              f"step {step} ({a}) for {dep}", rank=r, step=step, action=a)
    start, end, place = result.start, result.end, schedule.placement
    new = tuple.__new__  # Event(...) without its Python-level __new__: 100k+ events
    with paused_gc():
        events = [new(Event, (place[a[0]], a, start[a], end[a])) for a in start]
    return Timeline(P=schedule.P, M=schedule.M, S=schedule.S, schedule=schedule.name,
                    events=events, source="simulated", unit=unit,
                    forward_only=schedule.forward_only,
                    meta={"costs": costs.to_dict()})


def formula_bubble(name: str, P: int, M: int) -> Fraction | None:
    """The closed-form bubble fraction of schedule ``name``, or None if it has none.

    Valid under equal per-stage costs and free links; reported beside the
    simulated value, which holds under any cost model.
    """
    spec = get_spec(name)
    if spec.bubble is None:
        return None
    return spec.bubble(P, 1 if name == "naive" else M)
