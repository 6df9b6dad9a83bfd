"""The emulated layer computes x * w + b with exact gradients, whole or split.

Timing is not asserted (no timed unit tests); all times here are zero so the
tests run in milliseconds.
"""

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.measure.emulated import (
    EmulatedLayer, EmulatedTimes, _TimedAffine, _TimedInputBranch, _TimedWeightBranch,
    emulated_stages,
)

ZERO = EmulatedTimes(forward=0.0, backward=0.0)


def reference(x, w, b):
    return x * w + b


@pytest.mark.parametrize("split", [False, True])
def test_values_and_gradients_match_plain_autograd(split):
    torch.manual_seed(0)
    layer = EmulatedLayer(5, ZERO, split_backward=split).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, dtype=torch.float64)
    y = layer(x)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    b2 = layer.bias.detach().clone().requires_grad_()
    y2 = reference(x2, w2, b2)
    y2.backward(g)
    assert torch.equal(y, y2)
    assert torch.allclose(x.grad, x2.grad, rtol=0, atol=1e-15)
    assert torch.allclose(layer.weight.grad, w2.grad, rtol=1e-13, atol=1e-15)
    assert torch.allclose(layer.bias.grad, b2.grad, rtol=1e-13, atol=1e-15)


def timed_affine(split):
    """The layer's function with w and b as explicit inputs, for gradcheck."""
    if not split:
        return lambda x, w, b: _TimedAffine.apply(x, w, b, 0.0, 0.0)
    return lambda x, w, b: (_TimedInputBranch.apply(x, w.detach(), b.detach(), 0.0, 0.0)
                            + _TimedWeightBranch.apply(x.detach(), w, b, 0.0))


@pytest.mark.parametrize("split", [False, True])
def test_gradcheck(split):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)  # extra leading dim
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(timed_affine(split), (x, w, b))


def test_split_input_gradient_alone_leaves_weights_untouched():
    torch.manual_seed(2)
    layer = EmulatedLayer(6, ZERO, split_backward=True).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    assert torch.allclose(gx, layer.weight.detach().expand(4, 6))
    assert layer.weight.grad is None and layer.bias.grad is None
    gw, gb = torch.autograd.grad(y.sum(), [layer.weight, layer.bias])
    assert torch.allclose(gw, x.detach().sum(0)) and torch.allclose(gb, torch.full((6,), 4.0,
                                                                                   dtype=torch.float64))


def test_stages_chain_and_train_like_the_reference():
    stages = emulated_stages(3, width=8, times=ZERO, layers_per_stage=2, seed=7)
    again = emulated_stages(3, width=8, times=ZERO, layers_per_stage=2, seed=7)
    assert len(stages) == 3 and all(len(s) == 2 for s in stages)
    x = torch.randn(5, 8)
    out = x
    for s in stages:
        out = s(out)
    ref = x
    for s in again:
        for layer in s:
            ref = reference(ref, layer.weight, layer.bias)
    assert torch.allclose(out, ref)
    out.square().mean().backward()
    ref.square().mean().backward()
    for a, b in zip(stages, again):
        for la, lb in zip(a, b):
            assert torch.allclose(la.weight.grad, lb.weight.grad, atol=1e-6)


def test_stage_time_is_divided_over_its_layers():
    (stage,) = emulated_stages(1, width=2, times=EmulatedTimes(0.04, 0.08), layers_per_stage=4)
    assert [layer.times.forward for layer in stage] == [0.01] * 4
    assert [layer.times.backward for layer in stage] == [0.02] * 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(forward=-1.0), "forward time -1.0"),
    (dict(backward=float("nan")), "backward time nan"),
    (dict(backward=1.0, input_grad=2.0), "input_grad 2.0 s exceeds backward"),
])
def test_bad_times_are_named(kwargs, message):
    with pytest.raises(PipelineError, match=message):
        EmulatedTimes(**kwargs).split


def test_bad_stage_arguments_are_named():
    with pytest.raises(PipelineError, match="2 stage times given for P=3"):
        emulated_stages(3, width=4, times=[ZERO, ZERO])
    with pytest.raises(PipelineError, match="width must be a positive integer, got 0"):
        EmulatedLayer(0, ZERO)
    with pytest.raises(PipelineError, match=r"P must be a positive integer \(pipeline stages\), got 0"):
        emulated_stages(0, width=4, times=ZERO)
