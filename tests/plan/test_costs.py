"""The cost model's per-stage times (torch-free, synthetic profiles)."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.plan import Affine, LayerProfile, Profile, stage_costs
from tests.plan._profiles import synthetic


def test_first_stage_runs_no_input_gradient():
    # units 4, 1, 2 | 3: F = u ms, B = 2u, I = W = u per sample-free call
    prof = synthetic([4, 1, 2, 3], fixed=1e-3, per_sample=0.0)
    sc = stage_costs(prof, [3, 1], [8], [False, False])
    # stage 0: layer 0 runs only its weight half (4); layers 1, 2 their whole B (2 + 4)
    assert sc.backward[0][0] == pytest.approx(10e-3)
    assert sc.input_grad[0][0] == 0.0
    assert sc.weight_grad[0][0] == pytest.approx(10e-3)
    # stage 1 keeps the profiled B, I and W
    assert sc.backward[1][0] == pytest.approx(6e-3)
    assert (sc.input_grad[1][0], sc.weight_grad[1][0]) == pytest.approx((3e-3, 3e-3))
    # checkpointed, stage 0's recompute lands on W (its I does nothing)
    ck = stage_costs(prof, [3, 1], [8], [True, True])
    assert ck.weight_grad[0][0] == pytest.approx(10e-3 + 7e-3)
    assert ck.input_grad[0][0] == 0.0
    assert ck.input_grad[1][0] == pytest.approx(3e-3 + 3e-3)
    # W recomputes once per backward call it makes (one per layer with weights here)
    assert ck.weight_grad[1][0] == pytest.approx(3e-3 + 3e-3)
    two = stage_costs(synthetic([4, 1, 2, 3], fixed=1e-3, per_sample=0.0), [1, 3], [8],
                      [False, True])
    assert two.weight_grad[1][0] == pytest.approx(6e-3 + 3 * 6e-3)
    prof.layers[3] = dataclasses.replace(prof.layers[3], w_calls=2)
    assert stage_costs(prof, [3, 1], [8], [False, True]).weight_grad[1][0] == pytest.approx(
        3e-3 + 2 * 3e-3)


def test_first_stage_layers_without_parameters_skip_their_backward():
    def layer(j, params):
        one = Affine(1e-3, 0.0)
        return LayerProfile(str(j), "L", one, Affine(2e-3, 0.0), one,
                            one if params else Affine(), 100, 100, False,
                            params, 2 * params)
    # layer 0 has no parameters: nothing below it wants a gradient
    layers = [layer(0, 0), layer(1, 40), layer(2, 40), layer(3, 40)]
    prof = Profile({"name": "p", "layers": 4, "fingerprint": "p"}, layers, 100)
    sc = stage_costs(prof, [3, 1], [4], [False, False])
    assert sc.backward[0][0] == pytest.approx(0 + 1e-3 + 2e-3)


def test_the_loss_is_charged_to_the_last_stage_only():
    from conveyor.plan import LossProfile

    prof = synthetic([4, 1, 2, 3], fixed=1e-3, per_sample=0.0)
    plain = stage_costs(prof, [2, 2], [8, 7], [False, True])
    prof.loss = LossProfile(Affine(1e-4, 1e-5), Affine(2e-4, 2e-5))
    lossy = stage_costs(prof, [2, 2], [8, 7], [False, True])
    for mb, n in enumerate((8, 7)):
        lf, lb = 1e-4 + 1e-5 * n, 2e-4 + 2e-5 * n
        assert lossy.forward[1][mb] == pytest.approx(plain.forward[1][mb] + lf)
        assert lossy.backward[1][mb] == pytest.approx(plain.backward[1][mb] + lb)
        # no weights in a loss: a split backward runs it in I; never recomputed
        assert lossy.input_grad[1][mb] == pytest.approx(plain.input_grad[1][mb] + lb)
        assert lossy.weight_grad[1][mb] == pytest.approx(plain.weight_grad[1][mb])
        for kind in ("forward", "backward", "input_grad", "weight_grad"):
            assert getattr(lossy, kind)[0][mb] == getattr(plain, kind)[0][mb]
    # one stage: it is also the first, whose I does nothing and W runs all
    one = stage_costs(prof, [4], [8], [False])
    prof.loss = None
    none = stage_costs(prof, [4], [8], [False])
    assert one.input_grad[0][0] == none.input_grad[0][0] == 0.0
    assert one.weight_grad[0][0] == pytest.approx(none.weight_grad[0][0] + 2e-4 + 2e-5 * 8)


def test_a_profile_keeps_its_loss_through_json():
    from conveyor.errors import PlanError
    from conveyor.plan import LossProfile

    prof = synthetic([1, 2], fixed=1e-3)
    assert Profile.from_dict(prof.to_dict()).loss is None
    d = prof.to_dict()
    del d["loss"]  # a profile written before the field: no loss
    assert Profile.from_dict(d).loss is None
    prof.loss = LossProfile(Affine(1e-4, 1e-5), Affine(2e-4, 0.0))
    assert Profile.from_dict(prof.to_dict()).loss == prof.loss
    d = prof.to_dict()
    d["loss"] = {"forward": {"fixed": 1e-4}}
    with pytest.raises(PlanError, match="malformed profile"):
        Profile.from_dict(d)
