"""The runtime's own time per action and per transfer, from tiny measured steps.

Torch-free. ``conveyor.measure.profile.measure_links`` runs two pipelines
whose layers do next to no work (4 numbers a sample, one sample a
micro-batch) on two ranks and times their steps; what such a step takes is
the runtime's own work: dispatching each action, posting and waiting on its
sends and receives, and the time a message takes to arrive. Two unknowns
are fitted to two schedules:

- ``overhead``: seconds added to every F, B, I and W;
- ``latency``: seconds added to every transfer across a cut, as the pipeline
  sees it (its receives are posted ahead, so this is less than a blocking
  ping-pong's one-way time, which also pays for waking the waiting rank).

GPipe's step barely depends on the latency (its transfers overlap the
following forwards) and 1F1B's does (at P = 2 each pair of actions waits
for a message), so for each latency the overhead that makes the simulated
GPipe step equal the measured one is found by bisection, and the latency by
a bisection on 1F1B's simulated step less its measured one (it grows with
the latency along that curve). When no latency fits (1F1B measures faster
than the GPipe-fitted overhead allows even without latency, as on a loaded
machine, where GPipe's tiny step measured up to 4x what its actions and
transfers explain), the overhead is 0 and the latency is fitted to 1F1B
alone: on the emulated benchmark that predicted every schedule within
5 % where the GPipe-fitted overhead predicted 5-10 % too slow.
The tiny layers' few microseconds of compute land in the overhead.

Where the runtime's own time per send and per receive was measured
(``transfer_times``: "send" and "recv" in the links), the fit charges it to
the actions beside each transfer, as the planner does, so that the overhead
is what an action costs beyond its transfers: a rank whose actions each
move two messages (an inner stage, or two stages per rank) pays for both.
"""

from __future__ import annotations

from conveyor.errors import PlanError
from conveyor.plan.costs import transfer_charges
from conveyor.sim.cost import CostModel
from conveyor.sim.simulate import simulate

__all__ = ["fit_overhead", "fit_runtime"]


def _step(schedule, o: float, latency: float, bandwidth: float, nbytes: float,
          host: dict | None = None) -> float:
    f, b = transfer_charges(schedule.placement, [nbytes] * (schedule.S - 1), host)
    cm = CostModel(forward=tuple(o + x for x in f), backward=tuple(o + x for x in b),
                   latency=latency, bandwidth=bandwidth, activation_bytes=nbytes)
    return simulate(schedule, cm, check=False, unit="s").step_time


def _bisect(f, lo: float, hi: float, tol: float) -> float:
    """The x in [lo, hi] where the increasing f crosses 0."""
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _check_step(what: str, t: float) -> None:
    if not 0 < t < float("inf"):
        raise PlanError(f"measured {what} step {t!r} is not a time > 0 s")


def fit_overhead(schedule, measured_step: float, *, latency: float = 0.0,
                 bandwidth: float = float("inf"), activation_bytes: float = 0.0,
                 tol: float = 1e-8, host: dict | None = None) -> float:
    """Seconds per action (F and B alike) that make ``schedule``'s simulated
    step, with no other compute and links of ``latency`` s and ``bandwidth``
    bytes/s carrying ``activation_bytes`` per micro-batch, equal
    ``measured_step``. 0 when the links alone already take that long.
    ``host``: the runtime's time per send and receive (``{"send": {"fixed",
    "per_byte"}, "recv": ...}``), charged to the actions beside each
    transfer (``transfer_charges``). Raises PlanError for a measured step
    that is not a time > 0."""
    _check_step("", measured_step)

    def excess(o):
        return _step(schedule, o, latency, bandwidth, activation_bytes, host) - measured_step

    if excess(0.0) >= 0:
        return 0.0
    return _bisect(excess, 0.0, measured_step, tol)


def fit_runtime(flat, flat_step: float, chain, chain_step: float, *,
                bandwidth: float = float("inf"), activation_bytes: float = 0.0,
                tol: float = 1e-8, host: dict | None = None) -> tuple[float, float]:
    """(overhead, latency) in seconds that make the simulated steps of
    ``flat`` (a schedule whose step barely depends on the latency, GPipe)
    and ``chain`` (one whose step does, 1F1B at P = 2) equal the measured
    ``flat_step`` and ``chain_step``, with no other compute. When ``chain``
    is already slower than measured without latency, the overhead is 0 and
    the latency the one that fits ``chain`` alone. ``host``: as in
    ``fit_overhead``. Raises PlanError for a measured step that is not a
    time > 0."""
    _check_step("flat", flat_step)
    _check_step("chain", chain_step)

    def at(lat: float) -> tuple[float, float]:
        o = fit_overhead(flat, flat_step, latency=lat, bandwidth=bandwidth,
                         activation_bytes=activation_bytes, tol=tol, host=host)
        return o, _step(chain, o, lat, bandwidth, activation_bytes, host) - chain_step

    if at(0.0)[1] >= 0:
        # No latency >= 0 fits both: GPipe measured slower than its actions
        # and transfers explain, as on a loaded machine, where a rank that
        # waits for a message waits again to be woken. That is a cost of
        # waiting, so it goes to the latency, fitted to ``chain`` alone
        # (1F1B's actions each wait for one), with no overhead.
        def excess(lat):
            return _step(chain, 0.0, lat, bandwidth, activation_bytes, host) - chain_step
        return 0.0, _bisect(excess, 0.0, chain_step, tol)
    lat = _bisect(lambda x: at(x)[1], 0.0, chain_step, tol)
    return at(lat)[0], lat
