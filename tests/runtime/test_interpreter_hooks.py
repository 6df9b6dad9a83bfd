"""The interpreter's extension points: wrap_actions and after(index)."""

import pytest
import torch

from conveyor.runtime import Pipeline
from conveyor.schedule.ir import B


def _pipe():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return Pipeline(model, loss_fn=torch.nn.functional.mse_loss, optimizer=None,
                    schedule="gpipe", microbatches=3)


def test_after_runs_once_per_step_after_its_action_with_its_effects_visible():
    pipe = _pipe()
    row = pipe.interp.row
    last_b = max(i for i, a in enumerate(row) if a.kind == B)
    first_b = min(i for i, a in enumerate(row) if a.kind == B)
    seen = {first_b: [], last_b: []}
    for i in seen:  # a copy of the gradients as they stand after action i
        pipe.interp.after(i, lambda i=i: seen[i].append([p.grad.clone() for p in pipe.params]))
    x, y = torch.randn(6, 4), torch.randn(6, 1)
    for _ in range(2):
        pipe.forward_backward(x, y)
        final = [p.grad for p in pipe.params]
        # After the last backward the gradients are whole; after the first, not yet.
        assert all(torch.equal(a, b) for a, b in zip(seen[last_b][-1], final))
        assert not all(torch.equal(a, b) for a, b in zip(seen[first_b][-1], final))
    assert len(seen[first_b]) == len(seen[last_b]) == 2


def test_after_rejects_an_index_outside_the_row():
    pipe = _pipe()
    with pytest.raises(IndexError, match="outside rank 0"):
        pipe.interp.after(len(pipe.interp.row), lambda: None)


def test_wrap_actions_sees_every_action_in_row_order():
    pipe = _pipe()
    kinds = []

    def wrapper(handler):
        def run(a):
            kinds.append(a.kind)
            handler(a)
        return run

    pipe.interp.wrap_actions(wrapper)
    pipe.forward_backward(torch.randn(6, 4), torch.randn(6, 1))
    assert kinds == [a.kind for a in pipe.interp.row]
