"""The seed's partition rule (k = L/S, remainder spread over the first stages),
checked balances, and the cut of a real nn.Sequential."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conveyor.errors import PartitionError
from conveyor.partition import check_balance, stage_ranges, uniform_balance
from conveyor.runtime import split_model
from tests.runtime import _models

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("L, S, expected", [
    (8, 4, [2, 2, 2, 2]),        # the seed's k = L/P
    (18, 4, [5, 5, 4, 4]),       # remainder 2: one more on each of the first two stages
    (17, 4, [5, 4, 4, 4]),
    (7, 3, [3, 2, 2]),
    (4, 4, [1, 1, 1, 1]),
    (5, 1, [5]),
])
def test_uniform_balance(L, S, expected):
    assert uniform_balance(L, S) == expected
    assert stage_ranges(expected)[-1].stop == L


def test_stage_ranges_are_contiguous_blocks():
    assert stage_ranges([5, 5, 4]) == [range(0, 5), range(5, 10), range(10, 14)]


@pytest.mark.parametrize("balance, L, S, message", [
    ([2, 2], 5, 2, r"sums to 4 but the model has 5 layers; make the counts add up to 5"),
    ([3, 0, 2], 5, 3, r"leaves stage 1 empty"),
    ([5], 5, 2, r"1 entries but the pipeline has 2 stages"),
    ([2.5, 2.5], 5, 2, r"entry 0 is 2.5, not an integer"),
])
def test_check_balance_errors_name_the_numbers(balance, L, S, message):
    with pytest.raises(PartitionError, match=message):
        check_balance(balance, L, S)


def test_fewer_layers_than_stages_says_the_fix():
    with pytest.raises(PartitionError) as e:
        uniform_balance(3, 4)
    assert "cannot split 3 layers into 4 stages" in str(e.value)
    assert "use at most 3 stages" in str(e.value)


def test_split_model_keeps_the_layers_and_the_function():
    model = _models.mlp(4)  # 9 layers
    stages = split_model(model, 4)
    assert [len(s) for s in stages] == [3, 2, 2, 2]
    assert [m for s in stages for m in s] == list(model)  # same objects, same order
    x = torch.randn(3, _models.IN, dtype=torch.float64)
    h = x
    for s in stages:
        h = s(h)
    assert torch.equal(h, model(x))


def test_split_model_passes_a_tuple_as_the_unsplit_model_would():
    model = _models.tuple_mlp()
    first, second = split_model(model, 2, balance=[2, 2])
    x = torch.randn(3, _models.IN, dtype=torch.float64)
    assert torch.equal(second(*first(x)), model(x))


def test_split_model_rejects_what_it_cannot_cut():
    with pytest.raises(PartitionError, match="cannot cut a Linear into stages by position"):
        split_model(nn.Linear(2, 2), 2)


def test_partition_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "from conveyor.partition import uniform_balance; print(uniform_balance(10, 4))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[3, 3, 2, 2]"
