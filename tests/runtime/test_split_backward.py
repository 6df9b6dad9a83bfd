"""I + W is one B: exact gradients, and the same matmuls and FLOPs.

In-process: ``backward_input`` and ``WeightGrad.run`` against a full backward
on the same graph, and a pipeline whose schedule splits every B, on one rank
with two stages (an in-memory cut). The cross-process split schedule runs in
test_exactness.py.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from conveyor.runtime import Pipeline
from conveyor.runtime.execute.splitgrad import backward_input
from conveyor.schedule import Action, Schedule
from conveyor.schedule.ir import F, I, W
from tests.runtime import _models

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


class CountOps(TorchDispatchMode):
    """Counts every aten op that runs inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def matmuls(self) -> int:
        return sum(n for op, n in self.ops.items() if op in MATMULS)


def linear_stack(n: int = 6, d: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Linear(d, d), nn.Tanh())]).double()


def transformer_block(d: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True).double()


class TiedTwice(nn.Module):
    """One Linear used at two depths: its weight's consumers are linked by a
    path of input-gradient nodes (the fallback case)."""

    def __init__(self, d: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(d, d).double()
        self.mid = nn.Linear(d, d).double()

    def forward(self, x):
        return self.fc(torch.tanh(self.mid(torch.tanh(self.fc(x)))))


def run_b(model, x, g):
    """Full backward; returns (weight grads, input grad, op counter, flops)."""
    model.zero_grad()
    x = x.detach().requires_grad_(x.requires_grad)
    y = model(x)
    with CountOps() as ops, FlopCounterMode(display=False) as flops:
        torch.autograd.backward([y], [g])
    return [p.grad.clone() for p in model.parameters()], x.grad, ops, flops.get_total_flops()


def run_iw(model, x, g):
    model.zero_grad()
    x = x.detach().requires_grad_(x.requires_grad)
    y = model(x)
    inputs = [x] if x.requires_grad else []
    with CountOps() as ops, FlopCounterMode(display=False) as flops:
        gin, pending = backward_input([y], [g], inputs, list(model.parameters()))
        assert all(p.grad is None for p in model.parameters())  # I touched no weight
        pending.run()
    return ([p.grad.clone() for p in model.parameters()], gin[0] if gin else None, ops,
            flops.get_total_flops())


CASES = {
    "linear-stack": (linear_stack, (4, 8)),
    "transformer-block": (transformer_block, (2, 5, 16)),
    "tied-weight": (TiedTwice, (4, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("input_grad", [True, False], ids=["middle-stage", "first-stage"])
def test_i_plus_w_equals_b(case, input_grad):
    make, shape = CASES[case]
    model = make()
    g0 = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64, generator=g0).requires_grad_(input_grad)
    g = torch.randn(*shape[:-1], 8 if case != "transformer-block" else 16,
                    dtype=torch.float64, generator=g0)
    wb, xb, ops_b, flops_b = run_b(model, x, g)
    wiw, xiw, ops_iw, flops_iw = run_iw(model, x, g)
    for a, b in zip(wiw, wb):
        assert _models.rel_err(a, b) <= 1e-10
    if input_grad:
        assert _models.rel_err(xiw, xb) <= 1e-10
    else:
        assert xiw is None
    if case == "tied-weight":
        return  # exact, but its W walks the chain again (documented fallback)
    assert ops_b.matmuls() > 0
    assert ops_iw.matmuls() == ops_b.matmuls(), (ops_iw.ops, ops_b.ops)
    assert flops_iw == flops_b > 0


def test_old_split_would_fail_the_count():
    """The count is sensitive: the former W, a second backward from the stage
    outputs after an I that kept the graph, does more matmuls than B."""
    model = linear_stack()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 8, dtype=torch.float64)
    _, _, ops_b, _ = run_b(model, x, g)
    y = model(x)
    with CountOps() as ops:
        torch.autograd.grad([y], [x], [g], retain_graph=True)
        torch.autograd.backward([y], [g], inputs=list(model.parameters()))
    assert ops.matmuls() > ops_b.matmuls()


def split_on_one_rank(M: int) -> Schedule:
    """Two stages on one rank; every backward split, all W deferred to the end."""
    row = [Action(s, F, mb) for mb in range(M) for s in (0, 1)]
    row += [Action(s, I, mb) for mb in range(M) for s in (1, 0)]
    row += [Action(s, W, mb) for mb in reversed(range(M)) for s in (0, 1)]
    return Schedule("split-local", 1, M, (tuple(row),), placement=(0, 0))


def test_pipeline_with_split_backward_matches_unsplit_model():
    model, ref = _models.mlp(4), _models.mlp(4)
    pipe = Pipeline(model, loss_fn=_models.loss_fn, optimizer=None,
                    schedule=split_on_one_rank(4))
    x, y = _models.batch(13)
    res = pipe.forward_backward(x, y)
    loss = _models.loss_fn(ref(x), y)
    loss.backward()
    assert abs(res.loss - loss.item()) <= 1e-12 * abs(loss.item())
    for p, q in zip(model.parameters(), ref.parameters()):
        assert _models.rel_err(p.grad, q.grad) <= 1e-10


class TwoOutputs(nn.Module):
    """Two outputs: one on the input's path, one that only parameters reach
    (W must start from that output itself)."""

    def __init__(self, d: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(d, d).double(), nn.Linear(d, d).double()
        self.const = torch.ones(4, d, dtype=torch.float64)

    def forward(self, x):
        return torch.tanh(self.fc1(x)), self.fc2(self.const) * 2


def test_tuple_outputs_and_an_output_no_input_reaches():
    model = TwoOutputs()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    gs = [torch.randn(4, 8, dtype=torch.float64) for _ in range(2)]
    ys = model(x)
    torch.autograd.backward(list(ys), gs)
    ref = [p.grad.clone() for p in model.parameters()]
    ref_x = x.grad.clone()
    model.zero_grad()
    x.grad = None
    ys = model(x)
    (gx,), pending = backward_input(list(ys), gs, [x], list(model.parameters()))
    pending.run()
    assert _models.rel_err(gx, ref_x) <= 1e-10
    for p, r in zip(model.parameters(), ref):
        assert _models.rel_err(p.grad, r) <= 1e-10
