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
