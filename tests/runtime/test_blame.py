"""A failing forward names the layer that raised; the cut is blamed only when
the tensor that crossed it does not fit the next stage's first layer.

Two stages on one rank (an in-memory cut, the same code path as a received
tensor); the cross-process case is in test_errors.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conveyor.runtime import StageError
from conveyor.runtime.procs.blame import failing_module, input_mismatch
from tests.runtime import _models
from tests.runtime.test_errors import chunks_on_one_rank, pipe


def fail(layers, balance):
    x, y = _models.batch(8)
    p = pipe([m.double() for m in layers], schedule=chunks_on_one_rank(2, 2), balance=balance)
    with pytest.raises(StageError) as e:
        p.step(x, y)
    return e.value


def test_error_inside_stage_1s_second_layer_names_that_layer():
    # The cut carries 6 features and stage 1's first layer takes 6: the cut is
    # fine; stage 1's second layer is wrong.
    err = fail([nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(7, 3)], [2, 2])
    msg = str(err)
    assert msg.startswith("rank 0 (stage 1) failed in 1F0 (forward of micro-batch 0): ")
    assert "raised in layer 1 (Linear(in_features=7, out_features=3, bias=True)) of stage 1" in msg
    assert "cannot use the output of stage 0" not in msg
    assert (err.stage, err.mb) == (1, 0)


def test_mismatch_at_the_cut_names_the_cut():
    err = fail([nn.Linear(5, 6), nn.Tanh(), nn.Linear(7, 3)], [2, 1])
    msg = str(err)
    assert msg.startswith("rank 0 (stage 1) cannot use the output of stage 0")
    assert "first layer 0 (Linear(in_features=7" in msg
    assert "it takes 7 features in the last dimension but got (4, 6) float64" in msg
    assert "balance=" in msg


class Picky(nn.Module):
    """A first layer that fails for its own reasons (no declared input shape)."""

    def forward(self, x):
        raise ValueError("picky layer refuses")


def test_first_layer_failing_on_a_fitting_input_is_not_the_cuts_fault():
    err = fail([nn.Linear(5, 6), nn.Tanh(), Picky(), nn.Linear(6, 3)], [2, 2])
    msg = str(err)
    assert "cannot use the output of stage 0" not in msg
    assert "ValueError: picky layer refuses (raised in layer 0 (Picky()) of stage 1" in msg


def test_failing_module_is_read_from_the_traceback():
    inner = nn.Linear(4, 2)
    block = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), inner, nn.Linear(3, 1)))
    with pytest.raises(RuntimeError) as e:
        block(torch.randn(2, 3))
    assert failing_module(block, e.value) is block[1][2]  # Linear(3, 1) gets 2 features
    assert failing_module(nn.Linear(1, 1), e.value) is None  # not a module of that stage


@pytest.mark.parametrize("layer, x, fits", [
    (nn.Linear(4, 2), torch.randn(3, 4), True),
    (nn.Linear(4, 2), torch.randn(3, 5), False),
    (nn.Linear(4, 2).double(), torch.randn(3, 4), False),  # dtype
    (nn.Conv2d(3, 8, 3), torch.randn(1, 3, 8, 8), True),
    (nn.Conv2d(3, 8, 3), torch.randn(1, 4, 8, 8), False),
    (nn.LayerNorm(6), torch.randn(2, 6), True),
    (nn.LayerNorm(6), torch.randn(2, 5), False),
    (nn.BatchNorm1d(6), torch.randn(2, 7), False),
    (nn.Tanh(), torch.randn(2, 5), True),  # declares nothing: never the cut's fault
])
def test_input_mismatch(layer, x, fits):
    assert (input_mismatch(layer, (x,)) is None) == fits
