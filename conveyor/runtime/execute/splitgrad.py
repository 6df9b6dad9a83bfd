"""A stage's backward split into I (input gradients) and W (weight gradients)
that together do exactly the work of one full backward B.

The autograd graph of a stage's forward, walked from its outputs, has three
kinds of node:

    A    nodes from which a stage input is reachable: I must run them;
    Wg   nodes from which only parameters are reachable: only W needs them;
    the  "frontier": nodes of A with a child in Wg, e.g. the ``AddmmBackward``
         of a Linear, whose one call in B yields both the input gradient
         (child in A) and the weight gradient (child in Wg).

I runs ``autograd.grad`` from the outputs to the inputs. The engine computes a
node's output only where a path to a requested input needs it, so a frontier
node produces its input-gradient half only. A pre-hook on each frontier node
records the gradient flowing into it. W then starts the engine at those
frontier nodes (``GradientEdge`` roots) with the recorded gradients and asks
for the parameters only: each frontier node now produces its weight half, and
nothing of A runs again. The work of I plus W is the work of B (a test counts
the matmuls and FLOPs).

Frontier nodes are grouped so that one W call covers the Wg nodes they share
(a weight used twice); a group whose frontier nodes are linked by a path in A
(the same weight used at two depths of one stage) would make the engine walk
that path again, so that group alone falls back to a backward from the stage
outputs, exact but not cheaper.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch._functorch.config as _functorch_config
from torch.autograd.graph import GradientEdge, get_gradient_edge

__all__ = ["WeightGrad", "backward_input", "in_input_phase", "KEPT"]

# The attribute of a compiled graph's autograd node that holds what its I
# computed for its W (compilesplit).
KEPT = "_conveyor_split_w"

# True while I's engine call runs. A compiled graph's backward is one node
# that cannot tell from the engine which outputs are wanted, so it reads this
# (compilesplit). Not thread-local: the engine may run nodes on its own
# device threads; one process runs one backward at a time.
_INPUT_PHASE = [False]


def in_input_phase() -> bool:
    """Whether the autograd engine is running I (``backward_input``)."""
    return _INPUT_PHASE[0]


@contextlib.contextmanager
def _input_phase():
    _INPUT_PHASE[0] = True
    try:
        # I keeps the graph for W (retain_graph), which a compiled backward
        # that reuses its saved tensors' memory ("donated buffers") refuses.
        with _functorch_config.patch(donated_buffer=False):
            yield
    finally:
        _INPUT_PHASE[0] = False


def _walk(roots) -> tuple[list, dict]:
    """Every node reachable from ``roots``, children before parents, and each
    node's children (its ``next_functions`` minus the None ones)."""
    children: dict = {}
    order: list = []
    stack = [(n, False) for n in roots]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in children:
            continue
        kids = [c for c, _ in node.next_functions if c is not None]
        children[node] = kids
        stack.append((node, True))
        stack.extend((c, False) for c in kids if c not in children)
    # Each node is expanded once and finished after all its children (the
    # graph is acyclic), so ``order`` lists every node once, children first.
    return order, children


def _reaching(order, children, targets: set) -> set:
    """Nodes (in ``order``, children first) from which a node of ``targets`` is reachable."""
    hit: set = set()
    for n in order:
        if n in targets or any(c in hit for c in children[n]):
            hit.add(n)
    return hit


class _Find:
    """Union-find over frontier nodes."""

    def __init__(self):
        self.up: dict = {}

    def __call__(self, x):
        self.up.setdefault(x, x)
        while self.up[x] is not x:
            self.up[x] = self.up[self.up[x]]
            x = self.up[x]
        return x

    def join(self, a, b) -> None:
        self.up[self(a)] = self(b)


class WeightGrad:
    """What I keeps for W: per group, the frontier roots, the gradients
    recorded there, and the parameters they reach. ``run()`` accumulates the
    weight gradients into ``.grad``, as B would; call it once."""

    def __init__(self, groups: list, retain: bool):
        self.groups = groups  # [(roots, grads, params)]
        self.retain = retain

    def tensors(self) -> list[torch.Tensor]:
        """What I keeps until W: the recorded gradients, and what compiled
        graphs keep on their nodes (``KEPT``, see compilesplit)."""
        out = [g for _, grads, _ in self.groups for g in grads if isinstance(g, torch.Tensor)]
        nodes = {id(r.node): r.node for roots, _, _ in self.groups for r in roots
                 if isinstance(r, GradientEdge)}
        for node in nodes.values():
            for part in getattr(node, KEPT, None) or ():
                out += [t for t in part if isinstance(t, torch.Tensor)]
        return out

    def run(self) -> None:
        for roots, grads, params in self.groups:
            if roots:
                torch.autograd.backward(roots, grads, inputs=params, retain_graph=self.retain)
        self.groups = []


def backward_input(ys: Sequence[torch.Tensor], gs, inputs: Sequence[torch.Tensor],
                   params: Sequence[torch.Tensor]) -> tuple[tuple, WeightGrad]:
    """I: the gradients of ``inputs`` (tensors that require grad) from outputs
    ``ys`` with output gradients ``gs`` (None: ``ys`` are scalar losses), and
    the WeightGrad that W runs later to accumulate the gradients of
    ``params``. Returns (input gradients, None where unused; WeightGrad)."""
    out_edges = [get_gradient_edge(y) for y in ys]
    gs = list(gs) if gs is not None else [None] * len(ys)
    order, children = _walk({e.node for e in out_edges})
    in_nodes = {get_gradient_edge(x).node for x in inputs}
    p_of = {}
    for p in params:
        node = get_gradient_edge(p).node
        if node in children:  # used by this forward
            p_of[node] = p
    in_a = _reaching(order, children, in_nodes)
    reach_p = _reaching(order, children, set(p_of))

    # Frontier nodes and the Wg nodes (or parameters) below each.
    find = _Find()
    below: dict = {}
    owner: dict = {}  # Wg node -> a frontier node that reaches it
    frontier = [n for n in order if n in in_a
                and any(c not in in_a and c in reach_p for c in children[n])]
    # Outputs that no input reaches (all of them on stage 0) start W directly;
    # a scalar loss (gradient None) gets the 1 that backward would give it.
    root_outside = [(e, g if g is not None else torch.ones_like(y))
                    for e, g, y in zip(out_edges, gs, ys)
                    if e.node not in in_a and e.node in reach_p]
    starts = frontier + [e.node for e, _ in root_outside]
    for n in starts:
        find(n)
        stack = [c for c in children[n] if c not in in_a and c in reach_p] \
            if n in in_a else [n]
        mine: set = set()
        while stack:
            c = stack.pop()
            if c in mine:
                continue
            mine.add(c)
            if c in owner:
                find.join(n, owner[c])
            else:
                owner[c] = n
            stack.extend(k for k in children[c] if k in reach_p)
        below[n] = mine

    recorded: dict = {}
    handles = []
    for n in frontier:
        def hook(grad_outputs, n=n):
            recorded[n] = grad_outputs
        handles.append(n.register_prehook(hook))
    try:
        if inputs:
            with _input_phase():
                gin = torch.autograd.grad(ys, list(inputs), gs, retain_graph=True,
                                          allow_unused=True)
        else:
            gin = ()
    finally:
        for h in handles:
            h.remove()

    groups: dict = {}
    for n in starts:
        groups.setdefault(find(n), []).append(n)
    plan, retain = [], False
    root_grads = {e.node: [] for e, _ in root_outside}
    for e, g in root_outside:
        root_grads[e.node].append((e, g))
    for members in groups.values():
        params_g = [p_of[c] for n in members for c in below[n] if c in p_of]
        params_g = list({id(p): p for p in params_g}.values())
        if not params_g:
            continue
        if _linked_in_a(members, children, in_a):
            # The fallback walks from the stage outputs, so the graph must stay.
            retain = True
            plan.append((out_edges, gs, params_g))
            continue
        roots, grads = [], []
        for n in members:
            if n in root_grads:
                for e, g in root_grads[n]:
                    roots.append(e)
                    grads.append(g)
                continue
            for k, g in enumerate(recorded.get(n, ())):
                if g is not None:
                    roots.append(GradientEdge(n, k))
                    grads.append(g)
        plan.append((roots, grads, params_g))
    return tuple(gin), WeightGrad(plan, retain)


def _linked_in_a(members: list, children: dict, in_a: set) -> bool:
    """Whether one frontier node of a group reaches another through A."""
    inside = [n for n in members if n in in_a]
    if len(inside) < 2:
        return False
    targets = set(inside)
    for n in inside:
        seen, stack = set(), [c for c in children[n] if c in in_a]
        while stack:
            c = stack.pop()
            if c in targets:
                return True
            if c not in seen:
                seen.add(c)
                stack.extend(k for k in children[c] if k in in_a)
    return False
