"""The partition of a backward graph into dI and dW (execute/compilesplit.py),
on aten graphs traced by hand: every node in exactly one part, the parts'
results equal the whole graph's, and refusal where it cannot be split.
No compiler runs here (tests/runtime/test_compile.py runs the compiled ones)."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from conveyor.runtime.execute.compilesplit import NoSplit, split_backward

W_GRAD = {0}  # output 0 is the weight's gradient, output 1 the input's


def _run_split(bw, args, weight_pos=W_GRAD):
    gm = make_fx(bw, tracing_mode="fake")(*args)
    split = split_backward(gm, set(weight_pos))
    whole = gm(*args)
    i_part = split.dI(*args)
    n_i = len(whole) - len(weight_pos)
    w_part = split.dW(*args, *i_part[n_i:])
    return split, whole, list(i_part[:n_i]), list(w_part)


def _args(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, n, dtype=torch.float64, generator=g) for _ in range(4)]


def linear_tanh_backward(w, x, y, t):
    """Backward of y = tanh(x @ w.T): the gradient at the pre-activation is
    shared by both results."""
    g = t * (1 - y * y)
    return g.t() @ x, g @ w


def test_shared_gradient_is_stashed_not_recomputed():
    split, whole, gin, gw = _run_split(linear_tanh_backward, _args())
    assert [n.name for n in split.stash] == ["mul_1"]  # t * (1 - y*y), computed once in dI
    assert split.counts == {"backward": 6, "dI": 4, "dW": 2, "stash": 1}
    assert torch.equal(gw[0], whole[0]) and torch.equal(gin[0], whole[1])  # same ops, same shapes


def layer_norm_backward(w, x, y, t):
    """One fused op yields the input's and the weights' gradients."""
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
        t, x, [x.shape[-1]], mean, rstd, w[0], w[1], [True, True, True])
    return gw + gb, gx


def test_a_fused_op_runs_once_in_i():
    split, whole, gin, gw = _run_split(layer_norm_backward, _args())
    fused = [n for n in split.dI.graph.nodes if "native_layer_norm_backward" in str(n.target)]
    assert len(fused) == 1
    assert not any("native_layer_norm_backward" in str(n.target) for n in split.dW.graph.nodes)
    assert split.counts["dI"] + split.counts["dW"] == split.counts["backward"]
    assert torch.equal(gw[0], whole[0]) and torch.equal(gin[0], whole[1])


def test_input_gradient_only_graph_leaves_w_empty():
    split, whole, gin, gw = _run_split(linear_tanh_backward, _args(), weight_pos=())
    assert split.counts["dW"] == 0 and gw == [] and len(gin) == 2


def test_a_backward_with_side_effects_is_refused():
    def bw(w, x, y, t):
        y.add_(1)  # mutates an input, and nothing reads the result
        return t.t() @ x, t @ w

    gm = make_fx(bw, tracing_mode="fake")(*_args())
    with pytest.raises(NoSplit, match="side effects"):
        split_backward(gm, W_GRAD)
