"""One layer timed alone, and the byte counts the profiler takes per layer.

``_measure_layer`` times a layer's forward, backward, input-gradient and
weight-gradient calls on their own (``profile(in_context=False)``) and counts
the bytes autograd saves for its backward and that a split backward keeps
from I for W (``splitgrad``). The small helpers (tensors of a batch, a
device sync, a median of timed calls) serve the in-context timing
(``chain``) too.
"""

from __future__ import annotations

import statistics
import time

import torch

from conveyor.runtime.execute.splitgrad import backward_input


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _tensors(x)]
    return []


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _slice(batch, n: int):
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    return tuple(t[:n] for t in batch)


def _on(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else tuple(t.to(device) for t in x)


def _grad_leaf(x):
    """A fresh leaf of the layer's input: float tensors get requires_grad."""
    if isinstance(x, torch.Tensor):
        y = x.detach()
        return y.requires_grad_() if y.is_floating_point() else y
    return tuple(_grad_leaf(t) for t in x)


def _detached(y):
    return y.detach() if isinstance(y, torch.Tensor) else tuple(t.detach() for t in _tensors(y))


def _saved_bytes(layer, x, param_ptrs: set) -> tuple[int, bool, bool, object]:
    """Bytes autograd saves in one forward of ``layer`` (unique storages, not
    its input's nor parameters'), whether it saves its input, whether it saves
    its output, and the output."""
    xi = _grad_leaf(x)
    in_ptrs = {t.untyped_storage().data_ptr() for t in _tensors(xi)}
    seen: dict[int, int] = {}
    saves_input = False

    def pack(t):
        nonlocal saves_input
        ptr = t.untyped_storage().data_ptr()
        if ptr in in_ptrs:
            saves_input = True
        elif ptr not in param_ptrs:
            seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(xi)
    out_ptrs = {t.untyped_storage().data_ptr() for t in _tensors(y)}
    return sum(seen.values()), saves_input, bool(out_ptrs & set(seen)), y


def _kept_for_w(layer, x, params) -> tuple[int, int, int]:
    """What a split backward keeps from I for W on this layer alone (the
    gradients recorded at its frontier nodes, see ``splitgrad``): bytes of
    those that are the output's own gradient, bytes of the others (each
    storage once), and how many backward calls W makes (its groups)."""
    xi = _grad_leaf(x)
    outs = [t for t in _tensors(layer(xi)) if t.requires_grad]
    ins = [t for t in _tensors(xi) if t.requires_grad]
    if not outs or not ins or not params:
        return 0, 0, 0
    gs = [torch.ones_like(t) for t in outs]
    _, pending = backward_input(outs, gs, ins, params)
    given = {g.data_ptr() for g in gs}
    seen: dict[int, int] = {}
    for t in pending.tensors():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    own = sum(b for p, b in seen.items() if p in given)
    return own, sum(seen.values()) - own, len(pending.groups)


def _measure_layer(layer, x, n: int, repeats: int, warmup: int, device) -> tuple[dict, object]:
    """One layer at batch size n: times (s), bytes per sample; and its output."""
    params = [p for p in layer.parameters() if p.requires_grad]
    param_ptrs = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    fwd = _median_time(lambda: layer(_grad_leaf(x)), repeats, warmup, device)
    saved, saves_input, saves_output, y = _saved_bytes(layer, x, param_ptrs)
    result = {"forward": fwd, "out_bytes": _nbytes(y) / n, "saved_bytes": saved / n,
              "saves_input": saves_input, "saves_output": saves_output, "backward": 0.0, "input_grad": 0.0,
              "weight_grad": 0.0}
    if not any(t.requires_grad for t in _tensors(y)):
        return result, _detached(y)

    def backward_to(which: str):
        """A forward then the gradient of the output for ``which`` tensors; the
        forward's median is subtracted afterwards."""
        def go():
            xi = _grad_leaf(x)
            outs = [t for t in _tensors(layer(xi)) if t.requires_grad]
            ins = [t for t in _tensors(xi) if t.requires_grad]
            targets = {"full": ins + params, "input": ins, "weight": params}[which]
            if targets:
                torch.autograd.grad(outs, targets, [torch.ones_like(t) for t in outs],
                                    allow_unused=True)
        return go

    own, other, groups = _kept_for_w(layer, x, params)
    result["w_out_bytes"], result["w_bytes"], result["w_calls"] = own / n, other / n, groups
    has_input_grad = any(t.requires_grad for t in _tensors(_grad_leaf(x)))
    for key, which, needed in (("backward", "full", True), ("input_grad", "input", has_input_grad),
                               ("weight_grad", "weight", bool(params))):
        if needed:
            t = _median_time(backward_to(which), repeats, warmup, device)
            result[key] = max(t - fwd, 0.0)
    return result, _detached(y)
