"""A compiled graph's backward split into I (input gradients) and W (weight
gradients): the compiled counterpart of ``splitgrad``.

``torch.compile`` (AOTAutograd) gives each compiled graph one autograd node
whose one call computes every gradient of the graph's inputs. ``splitgrad``
asks the engine for the input gradients only and relies on each eager node
computing just the outputs asked for; a compiled node cannot: it would run
its whole backward in I and again in W. So conveyor's backend partitions the
backward FX graph before inductor compiles it (``split_backward``):

    dI     the nodes the gradients of the graph's non-parameter inputs need;
    dW     the other nodes the parameters' gradients need;
    stash  the values dI computes that dW reads (for a Linear: the gradient
           at its output, what splitgrad records at its frontier node).

Every node of the backward lands in exactly one part (the counts are kept in
``Split.counts``), so dI and dW together do the work of the whole backward.
Both parts are compiled by inductor. At run time the compiled node's one call
(``SplitBackward``) does what its caller asked for:

- inside splitgrad's I (``splitgrad.in_input_phase()``): dI only; the stash
  and dI's outputs stay on the autograd node;
- a later call on a node that holds a stash (splitgrad's W starts the engine
  there): dW from the stash, dI's outputs again (the engine keeps the ones it
  needs, e.g. an input computed from parameters outside the graph);
- any other call (a full B, or W on a graph no I touched: stage 0, whose
  input needs no gradient): dI then dW.

A backward that cannot be partitioned this way raises ``NoSplit`` naming why;
the backend then runs that graph uncompiled (see ``compiled``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from conveyor.runtime.execute.splitgrad import KEPT as _KEEP
from conveyor.runtime.execute.splitgrad import in_input_phase

__all__ = ["NoSplit", "Split", "split_backward", "SplitBackward"]

_SYM = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


class NoSplit(Exception):
    """This backward graph cannot be split; the message says why."""


@dataclass
class Split:
    """A backward graph in two parts (see the module docstring).

    dI:  placeholders as the backward's, outputs (input grads..., stash...).
    dW:  placeholders as the backward's then the stash, outputs the weight grads.
    counts: compute nodes of the whole backward, of dI, of dW (dI + dW equals
            the whole, up to size arithmetic dW recomputes).
    """

    dI: fx.GraphModule
    dW: fx.GraphModule
    stash: list
    weight_pos: frozenset
    n_out: int
    counts: dict


def _compute(nodes) -> int:
    return sum(1 for n in nodes if n.op == "call_function" and not _is_sym(n))


def _is_sym(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), _SYM)


def _ancestors(outs) -> set:
    seen, stack = set(), [n for n in outs if isinstance(n, fx.Node)]
    while stack:
        n = stack.pop()
        if n in seen or n.op == "placeholder":
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def split_backward(gm: fx.GraphModule, weight_pos: set[int]) -> Split:
    """Partition backward graph ``gm``, whose output k is the gradient of the
    forward's input k, into dI and dW, the gradients at ``weight_pos`` (the
    parameters) going to dW. Raises NoSplit when that cannot be done exactly."""
    g = gm.graph
    ph = [n for n in g.nodes if n.op == "placeholder"]
    out_node = next(n for n in g.nodes if n.op == "output")
    outs = list(out_node.args[0])
    i_outs = [o for k, o in enumerate(outs) if k not in weight_pos]
    w_outs = [o for k, o in enumerate(outs) if k in weight_pos]
    need_i = _ancestors(i_outs)
    stash, in_stash, need_w = [], set(), set()
    stack = [n for n in w_outs if isinstance(n, fx.Node)]
    while stack:
        n = stack.pop()
        if n in need_w or n in in_stash or n.op == "placeholder":
            continue
        if n not in need_i and n.op == "call_function" and n.target is operator.getitem \
                and n.args[0] in need_i:
            need_i.add(n)  # one output of a node dI runs (a fused op): take it from there
        if n in need_i and not _is_sym(n):
            if not isinstance(n.meta.get("val"), torch.Tensor):
                raise NoSplit(f"the weight gradients read {n.format_node()}, a "
                              f"{type(n.meta.get('val')).__name__} that cannot be stashed")
            stash.append(n)
            in_stash.add(n)
            continue
        need_w.add(n)  # sizes dI computed are recomputed (no tensor work)
        stack.extend(n.all_input_nodes)
    left = [n for n in g.nodes if n.op == "call_function" and n not in need_i
            and n not in need_w]
    impure = [n for n in left if n.is_impure()]
    if impure:
        raise NoSplit(f"the backward has side effects outside its outputs "
                      f"({impure[0].format_node()})")
    order = {n: k for k, n in enumerate(g.nodes)}
    stash.sort(key=order.get)
    dI = _subgraph(gm, ph, [], need_i, [*i_outs, *stash])
    dW = _subgraph(gm, ph, stash, need_w, w_outs)
    counts = {"backward": _compute(g.nodes), "dI": _compute(need_i), "dW": _compute(need_w),
              "stash": len(stash)}
    return Split(dI, dW, stash, frozenset(weight_pos), len(outs), counts)


def _subgraph(gm, ph, extra, keep: set, outs) -> fx.GraphModule:
    """A graph of ``gm``'s placeholders, then ``extra`` nodes as placeholders,
    the nodes of ``keep`` in their order, returning ``outs``."""
    sub, env = fx.Graph(), {}
    for p in ph:
        env[p] = sub.placeholder(p.name)
        env[p].meta = dict(p.meta)
    for n in extra:
        env[n] = sub.placeholder(f"stash_{n.name}")
        env[n].meta = dict(n.meta)
    for n in gm.graph.nodes:
        if n in keep:
            env[n] = sub.node_copy(n, lambda a: env[a])
    out = sub.output(tuple(env[o] if isinstance(o, fx.Node) else o for o in outs))
    out.meta["user_visible_output_idxs"] = []
    return fx.GraphModule(gm, sub)


class SplitBackward:
    """The compiled backward of one graph, as AOTAutograd calls it (boxed: one
    list of arguments; see the module docstring for what each call runs).

    ``runs`` counts the calls: "I" (dI only, kept for W), "W" (dW from
    what I kept) and "B" (dI then dW)."""

    def __init__(self, split: Split, dI, dW):
        self.dI, self.dW = dI, dW
        self.weight_pos, self.n_out = split.weight_pos, split.n_out
        self.n_i = split.n_out - len(split.weight_pos)
        self.counts = split.counts
        self.runs = {"I": 0, "W": 0, "B": 0}
        # Set on the instance: torch's wrappers copy the instance's __dict__.
        self._boxed_call = True

    def __call__(self, args: list) -> list:
        args = list(args)
        node = torch._C._current_autograd_node()
        kept = getattr(node, _KEEP, None) if node is not None else None
        if kept is not None:  # W after I
            delattr(node, _KEEP)
            gin, stash = kept
            self.runs["W"] += 1
        else:
            res = self.dI(list(args))
            gin, stash = list(res[:self.n_i]), list(res[self.n_i:])
            if in_input_phase() and node is not None:
                setattr(node, _KEEP, (gin, stash))
                self.runs["I"] += 1
                return self._join(gin, [None] * len(self.weight_pos))
            self.runs["B"] += 1
        gw = self.dW(list(args) + stash)
        return self._join(gin, list(gw))

    def _join(self, gin: list, gw: list) -> list:
        out, i, w = [], iter(gin), iter(gw)
        for k in range(self.n_out):
            out.append(next(w) if k in self.weight_pos else next(i))
        return out
