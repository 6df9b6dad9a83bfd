"""Layers timed in context: every layer in order, then every backward in
reverse, as a stage runs them (``_chained_times``), with the split backward's
I and W passes and the loss timed the same way; ``_measure_sizes`` runs it at
each sample size the profile fits a line to.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import torch

from conveyor.measure.layer import (
    _detached, _grad_leaf, _measure_layer, _on, _slice, _sync, _tensors,
)
from conveyor.runtime.execute.splitgrad import backward_input


class _Chained(NamedTuple):
    """In-context seconds per layer (see ``_chained_times``), and the loss's."""

    forward: list[float]
    backward: list[float]
    input_grad: list[float] | None    # None: not measured (no split pass)
    weight_grad: list[float] | None
    loss: tuple[float, float] | None  # (forward, backward), or None without a loss


def _leaves(x) -> list[torch.Tensor]:
    return [t for t in _tensors(x) if t.requires_grad]


def _chain_forward(layers, x, device, fwd=None):
    """Every layer's forward in order, each on a fresh leaf of the previous
    output; appends each forward's seconds to ``fwd[j]`` when given.
    Returns (inputs, outputs)."""
    ins, outs, y = [], [], x
    for j, layer in enumerate(layers):
        xi = _grad_leaf(_detached(y))
        y, t = _timed(lambda: layer(xi), device)
        if fwd is not None:
            fwd[j].append(t)
        ins.append(xi)
        outs.append(y)
    return ins, outs


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def _loss_grads(loss, out, device, times=None):
    """Run ``loss`` = (loss_fn, targets) on the model's output as the last stage
    does (the loss as a scalar, weighted), then its backward to the output.
    Returns the output's gradients (None without a loss); appends (forward,
    backward) seconds to ``times`` when given."""
    ys = _leaves(out)
    if loss is None or not ys:
        return None
    loss_fn, targets = loss

    def forward():
        value = loss_fn(out, targets)
        weighted = value.reshape(()) * 1.0
        weighted.detach().to(torch.float64)  # the runtime's running sum of the step
        return weighted

    weighted, tf = _timed(forward, device)
    grads, tb = _timed(lambda: torch.autograd.grad(weighted, ys), device)
    if times is not None:
        times.append((tf, tb))
    return list(grads)


def _out_grads(grads, ys) -> list:
    """The gradients to feed a layer's outputs ``ys``: those handed down from
    the layer after it (or the loss), else ones."""
    if grads is not None and len(grads) == len(ys):
        return grads
    return [torch.ones_like(t) for t in ys]


def _next_grads(grads, ins) -> list | None:
    """The gradients to feed the layer before: those of this layer's inputs
    (``grads``, one per input leaf; None where unused)."""
    leaves = _leaves(ins)
    if not leaves:
        return None
    return [g if g is not None else torch.zeros_like(t) for t, g in zip(leaves, grads)]


def _chained_times(layers, x, repeats: int, warmup: int, device, *, loss=None,
                   split: bool = False) -> _Chained:
    """Per layer, forward and backward seconds measured as a stage runs them:
    each pass runs every layer's forward in order, then every layer's backward
    in reverse, each fed the next one's input gradient and adding into the
    parameters' ``.grad``; the median of ``repeats`` passes after ``warmup``.
    With ``loss`` (``(loss_fn, targets)``) the last layer's output gradient
    comes from the loss, as on the last stage, and the loss's own forward and
    backward are timed too; without, it is all ones.

    With ``split``, a second pass per repeat runs the backward the way a split
    schedule's I and W run it (``splitgrad.backward_input`` per layer in
    reverse, then each layer's kept weight gradients), timing each part.

    A layer timed alone, call after call, finds its weights and inputs in the
    cache and writes no gradient into an existing ``.grad``; inside a stage
    the other layers have run in between. On the real-compute benchmark
    (benchmarks/planner.md) stages ran 5-30 % slower than the sum of their
    layers timed alone, and about as slow as measured here. Timing I and W
    alone, each from the layer's outputs, also mis-splits the backward: the
    weight gradient alone runs every node on the way to the parameters."""
    L = len(layers)
    fwd: list[list[float]] = [[] for _ in range(L)]
    bwd: list[list[float]] = [[] for _ in range(L)]
    ig: list[list[float]] = [[] for _ in range(L)]
    wg: list[list[float]] = [[] for _ in range(L)]
    lt: list[tuple[float, float]] = []
    for k in range(warmup + repeats):
        keep = k >= warmup
        ins, outs = _chain_forward(layers, x, device, fwd if keep else None)
        grads = _loss_grads(loss, outs[-1], device, lt if keep else None)
        for j in range(L - 1, -1, -1):
            ys = _leaves(outs[j])
            if not ys:
                if keep:
                    bwd[j].append(0.0)
                grads = None
                continue
            gs = _out_grads(grads, ys)
            _, t = _timed(lambda: torch.autograd.backward(ys, gs), device)
            if keep:
                bwd[j].append(t)
            grads = _next_grads([t.grad for t in _leaves(ins[j])], ins[j])
        del ins, outs
        if split:
            ins, outs = _chain_forward(layers, x, device)
            grads = _loss_grads(loss, outs[-1], device)
            pending = []
            for j in range(L - 1, -1, -1):
                ys = _leaves(outs[j])
                if not ys:
                    grads = None
                    continue
                gs = _out_grads(grads, ys)
                params = [p for p in layers[j].parameters() if p.requires_grad]
                need = _leaves(ins[j])
                (got, kept), t = _timed(lambda: backward_input(ys, gs, need, params), device)
                if keep:
                    ig[j].append(t)
                pending.append((j, kept))
                grads = _next_grads(got, ins[j])
            for j, kept in pending:  # W after every I, as a zero-bubble stage defers it
                _, t = _timed(kept.run, device)
                if keep:
                    wg[j].append(t)
            del ins, outs, pending
    for layer in layers:
        layer.zero_grad(set_to_none=True)

    def med(xs):
        return statistics.median(xs) if xs else 0.0

    return _Chained([med(f) for f in fwd], [med(b) for b in bwd],
                    [med(i) for i in ig] if split else None,
                    [med(w) for w in wg] if split else None,
                    (med([a for a, _ in lt]), med([b for _, b in lt])) if lt else None)


def _in_context(row: dict, chained: _Chained, j: int) -> dict:
    """``row`` (layer j timed alone) with its times replaced by the chained
    measurement: forward and backward, and I and W where the split pass ran
    (else I and W alone, scaled by the same factor as the backward)."""
    f, b = chained.forward[j], chained.backward[j]
    if chained.input_grad is not None:
        return {**row, "forward": f, "backward": b, "input_grad": chained.input_grad[j],
                "weight_grad": chained.weight_grad[j]}
    alone = row["backward"]
    k = b / alone if alone > 0 else 1.0
    return {**row, "forward": f, "backward": b, "input_grad": row["input_grad"] * k,
            "weight_grad": row["weight_grad"] * k}


def _warm_up(layers, batch, device, rounds: int) -> tuple[list[float], float]:
    """Whole-model forward and backward passes first: the first calls in a
    process pay one-off costs (thread pools, allocator, kernel selection)
    that would otherwise land on the first layer's time. Returns the last
    pass's forward seconds per layer and its backward seconds (for the
    progress bar's estimates)."""
    fwd, bwd = [0.0] * len(layers), 0.0
    for _ in range(rounds):
        x = batch.to(device) if isinstance(batch, torch.Tensor) else tuple(
            t.to(device) for t in batch)
        x = _grad_leaf(x)
        for j, layer in enumerate(layers):
            layer.to(device)
            x, fwd[j] = _timed(lambda: layer(x), device)
        outs = [t for t in _tensors(x) if t.requires_grad]
        if outs:
            _, bwd = _timed(lambda: torch.autograd.backward([t.sum() for t in outs]), device)
        for layer in layers:
            layer.zero_grad(set_to_none=True)
    return fwd, bwd


def expected_work(fwd: list[float], bwd: float, sizes, calls: int, in_context: bool,
                  names: list[str]) -> list[tuple[str, str, float]]:
    """(phase, label, expected seconds) of each step of ``_measure_sizes``,
    from one warm-up pass at the first size (``fwd`` per layer, ``bwd`` in
    all), each size's time taken as proportional to it, ``calls`` = warmup
    + repeats. A layer alone: a timed forward, three timed forward+backward
    kinds (full, input, weight) and two passes for bytes; in order: every
    forward and backward, twice (the second time split into I and W)."""
    F = sum(fwd)
    back = [bwd * f / F if F > 0 else bwd / max(len(fwd), 1) for f in fwd]
    out = []
    for n in sizes:
        k = n / sizes[0]
        for j, (f, b) in enumerate(zip(fwd, back)):
            out.append((f"layers alone, n={n}", f"layer {j} {names[j]}",
                        k * ((calls + 1) * f + 3 * calls * (f + b) + (f + b))))
        if in_context:
            out.append((f"every layer in order, n={n}", f"{len(fwd)} layers",
                        k * calls * 2 * (F + bwd)))
    return out


def _measure_sizes(layers, sample_batch, sizes, repeats, warmup, device, in_context,
                   bar, loss=None, work=None) -> tuple[list[list[dict]], list, object]:
    """Per batch size of ``sizes``, every layer's measurement row; per size the
    loss's (forward, backward) seconds (None without ``loss``, measured only
    in context); and the model's output (at the last size). ``loss``:
    (loss_fn, targets of the whole sample batch). ``bar``: a WeightedProgress
    (or None) advanced by ``work`` (``expected_work``'s steps, in order)."""
    work, at = list(work or []), [0]

    def done(_: str) -> None:  # a step is done: show the next one, where it is
        if bar is not None and at[0] < len(work):
            seconds = work[at[0]][2]
            at[0] += 1
            phase, label, _ = work[at[0]] if at[0] < len(work) else ("finishing", "", 0.0)
            bar.phase_name = phase
            bar.advance(label, seconds)

    per_size, loss_times = [], []
    for n in sizes:
        x = _on(_slice(sample_batch, n), device)
        x_n, rows = x, []
        for j, layer in enumerate(layers):
            layer.to(device)
            row, x = _measure_layer(layer, x, n, repeats, warmup, device)
            rows.append(row)
            done(f"layer {j} {type(layer).__name__}")
        lt = None
        if in_context:
            sliced = None if loss is None else (loss[0], _on(_slice(loss[1], n), device))
            chained = _chained_times(layers, x_n, repeats, warmup, device, loss=sliced,
                                     split=True)
            rows = [_in_context(row, chained, j) for j, row in enumerate(rows)]
            lt = chained.loss
            done("done")
        per_size.append(rows)
        loss_times.append(lt)
    return per_size, loss_times, x
