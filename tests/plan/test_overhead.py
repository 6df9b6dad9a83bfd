"""The runtime's per-action overhead in the profile and the cost model, and
its fit from tiny measured steps (torch-free)."""

from __future__ import annotations

import json

import pytest

from conveyor.errors import PlanError
from conveyor.plan import Profile, load_profile, stage_costs
from conveyor.plan.overhead import fit_overhead, fit_runtime
from conveyor.schedule import build_schedule
from conveyor.sim import simulate
from conveyor.sim.cost import CostModel
from tests.plan._profiles import synthetic


def test_overhead_round_trips_and_old_profiles_load_without_it(tmp_path):
    prof = synthetic([1, 2, 3])
    prof.overhead = 2.5e-4
    back = load_profile(prof.save(tmp_path / "p.json"))
    assert back.overhead == 2.5e-4
    old = prof.to_dict()
    del old["overhead"]  # a profile written before the field
    assert Profile.from_dict(old).overhead == 0.0
    for bad in (-1e-3, float("nan"), float("inf"), "soon"):
        d = dict(old, overhead=bad)
        with pytest.raises(PlanError, match="overhead|malformed"):
            Profile.from_dict(json.loads(json.dumps(d)))


def test_overhead_is_charged_once_per_action():
    o = 1e-4
    base = synthetic([1, 1, 2, 3], fixed=1e-3, per_sample=0.0)
    prof = synthetic([1, 1, 2, 3], fixed=1e-3, per_sample=0.0)
    prof.overhead = o
    for ck in ([False, False], [True, True]):
        a, b = stage_costs(base, [2, 2], [4], ck), stage_costs(prof, [2, 2], [4], ck)
        for kind in ("forward", "backward", "input_grad", "weight_grad"):
            for s in range(2):  # once, also where a recompute adds a forward's compute
                assert getattr(b, kind)[s][0] == pytest.approx(getattr(a, kind)[s][0] + o)
    # by hand, one rank (1F1B, M = 4, two layers of fixed 1 ms forward, 2 ms backward):
    # F = 2 ms; B on the first stage = 1 ms (layer 0's weight half) + 2 ms (layer 1's
    # whole backward); each of the 8 actions pays o once
    one = synthetic([1, 1], fixed=1e-3, per_sample=0.0)
    one.overhead = o
    sched = build_schedule("1f1b", 1, 4)
    tl = simulate(sched, stage_costs(one, [2], [2] * 4, [False]).cost_model(), unit="s")
    assert tl.step_time == pytest.approx(4 * (2e-3 + 3e-3) + 8 * o)


def _steps(o, lat):
    out = []
    for name in ("gpipe", "1f1b"):
        sched = build_schedule(name, 2, 8)
        cm = CostModel(forward=o, backward=o, latency=lat, activation_bytes=16)
        out.append((sched, simulate(sched, cm, check=False, unit="s").step_time))
    return out


@pytest.mark.parametrize("o, lat", [(3e-4, 1e-4), (1e-3, 2e-3), (5e-5, 0.0)])
def test_fit_runtime_recovers_overhead_and_latency(o, lat):
    (flat, t_flat), (chain, t_chain) = _steps(o, lat)
    got_o, got_lat = fit_runtime(flat, t_flat, chain, t_chain, activation_bytes=16)
    assert got_o == pytest.approx(o, rel=1e-3, abs=1e-7)
    assert got_lat == pytest.approx(lat, rel=1e-3, abs=1e-7)
    # with the latency known, the overhead alone
    assert fit_overhead(chain, t_chain, latency=lat, activation_bytes=16) == pytest.approx(
        o, rel=1e-3)


def test_fit_with_links_slower_than_measured_gives_zero():
    sched = build_schedule("1f1b", 2, 8)
    assert fit_overhead(sched, 1e-3, latency=1e-3) == 0.0
    with pytest.raises(PlanError, match="not a time"):
        fit_overhead(sched, 0.0)


def test_fit_runtime_without_a_fitting_latency_fits_1f1b_by_latency():
    # GPipe measured slower than its actions explain: 1F1B's step is then
    # reproduced by the latency alone, no overhead
    (flat, _), (chain, t_chain) = _steps(0.0, 2e-3)
    t_flat = 3 * t_chain
    o, lat = fit_runtime(flat, t_flat, chain, t_chain, activation_bytes=16)
    assert o == 0.0 and lat == pytest.approx(2e-3, rel=1e-4)
    assert simulate(chain, CostModel(forward=0.0, backward=0.0, latency=lat,
                                     activation_bytes=16), unit="s").step_time == pytest.approx(
        t_chain, rel=1e-4)


HOST = {"send": {"fixed": 2e-5, "per_byte": 1e-10}, "recv": {"fixed": 1e-5, "per_byte": 5e-11}}


def test_transfer_charges_land_beside_each_crossing():
    from conveyor.plan import transfer_charges

    send = lambda n: 2e-5 + 1e-10 * n  # noqa: E731
    recv = lambda n: 1e-5 + 5e-11 * n  # noqa: E731
    cuts = [1000.0, 2000.0, 3000.0]
    # interleaved at P = 2: every cut crosses ranks
    f, b = transfer_charges((0, 1, 0, 1), cuts, HOST)
    assert f == pytest.approx([send(1000), recv(1000) + send(2000), recv(2000) + send(3000),
                               recv(3000)])
    assert b == pytest.approx([recv(1000), send(1000) + recv(2000), send(2000) + recv(3000),
                               send(3000)])
    # a V: the middle cut stays on rank 1 and moves nothing
    f, b = transfer_charges((0, 1, 1, 0), cuts, HOST)
    assert f == pytest.approx([send(1000), recv(1000), send(3000), recv(3000)])
    assert b == pytest.approx([recv(1000), send(1000), recv(3000), send(3000)])
    assert transfer_charges((0, 1), [5.0], None) == ([0.0, 0.0], [0.0, 0.0])


def test_stage_costs_charge_transfers_given_the_placement():
    from conveyor.plan import transfer_charges

    prof = synthetic([1, 1, 2, 3], fixed=1e-3, per_sample=0.0)
    plain = stage_costs(prof, [1, 1, 1, 1], [4, 3], [False] * 4, (0, 1, 0, 1))
    prof.links = {"latency": 0.0, "bandwidth": None, **HOST}
    assert stage_costs(prof, [1, 1, 1, 1], [4, 3], [False] * 4) == plain  # no placement
    got = stage_costs(prof, [1, 1, 1, 1], [4, 3], [False] * 4, (0, 1, 0, 1))
    for mb, n in enumerate((4, 3)):
        f, b = transfer_charges((0, 1, 0, 1), [x * n for x in plain.cut_per_sample], HOST)
        for s in range(4):
            assert got.forward[s][mb] == pytest.approx(plain.forward[s][mb] + f[s])
            assert got.backward[s][mb] == pytest.approx(plain.backward[s][mb] + b[s])
            # stage 0's I does nothing: W receives its gradient
            i_extra, w_extra = (0.0, b[s]) if s == 0 else (b[s], 0.0)
            assert got.input_grad[s][mb] == pytest.approx(plain.input_grad[s][mb] + i_extra)
            assert got.weight_grad[s][mb] == pytest.approx(plain.weight_grad[s][mb] + w_extra)
    assert Profile.from_dict(prof.to_dict()).host_transfers == HOST
    for bad in ({"send": {"fixed": -1.0, "per_byte": 0.0}}, {"send": {"fixed": 1e-5}},
                {"send": "fast"}):
        d = prof.to_dict()
        d["links"] = dict(d["links"], **bad)
        with pytest.raises(PlanError, match="send"):
            Profile.from_dict(d)


def test_fit_runtime_recovers_overhead_beside_measured_transfers():
    from conveyor.plan import transfer_charges

    o, lat = 3e-4, 1e-4
    steps = []
    for name in ("gpipe", "1f1b"):
        sched = build_schedule(name, 2, 8)
        f, b = transfer_charges(sched.placement, [16.0], HOST)
        cm = CostModel(forward=tuple(o + x for x in f), backward=tuple(o + x for x in b),
                       latency=lat, activation_bytes=16)
        steps.append((sched, simulate(sched, cm, check=False, unit="s").step_time))
    (flat, t_flat), (chain, t_chain) = steps
    got_o, got_lat = fit_runtime(flat, t_flat, chain, t_chain, activation_bytes=16, host=HOST)
    assert got_o == pytest.approx(o, rel=1e-3) and got_lat == pytest.approx(lat, rel=1e-3)
    # the same steps fitted without the transfers put them into the overhead
    assert fit_runtime(flat, t_flat, chain, t_chain, activation_bytes=16)[0] > o + 2e-5
