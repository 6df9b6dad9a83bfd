"""The profiler: what each layer of a model costs, measured on a sample batch.

For every layer (in order, each fed the previous layer's output) it measures,
at the sample batch size n, n/2 and n/4 (a least-squares line gives each time
as fixed + per sample, see ``conveyor.plan.profile.Affine``):

- forward and full backward time in context (``_chained_times``: every
  layer in order, then every backward in reverse, as a stage runs them),
  input-gradient time (``autograd.grad`` for the layer's input only) and
  weight-gradient time (for its parameters only), these two timed alone and
  scaled to the in-context backward: medians of ``repeats`` timed calls
  after ``warmup`` untimed ones;
- bytes of its output per sample (the activation at the cut after it);
- bytes autograd saves for its backward, other than its input
  (``saved_tensors_hooks``, each storage once, parameters excluded);
- bytes of its parameters and of the optimizer's state for them;
- bytes per sample a split backward keeps from I for W (``splitgrad``): the
  layer's output gradient, and any other gradient recorded inside it.

Returns a torch-free ``Profile`` (``conveyor.plan.profile``) that the planner
reads. ``measure_links`` times a ping-pong between two local ranks, over
gloo or shared memory (the transport the run will use).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from typing import NamedTuple

import torch

from conveyor.progress import ProgressBar
from conveyor.errors import PlanError
from conveyor.plan.profile import Affine, LayerProfile, LossProfile, Profile
from conveyor.runtime.execute.splitgrad import backward_input
from conveyor.runtime.execute.stages import layers_of

__all__ = ["profile", "fingerprint", "measure_links", "tiny_steps", "fit_tiny", "transfer_times",
           "OPTIMIZER_STATE"]

# Optimizer state per parameter byte: Adam keeps two moments, SGD with
# momentum one buffer.
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd": 0, "momentum": 1, "none": 0}


def fingerprint(model) -> str:
    """A short hash of each layer's class and parameter shapes: two models with
    the same fingerprint cut the same way."""
    parts = []
    for layer in layers_of(model):
        shapes = [tuple(p.shape) for p in layer.parameters()]
        parts.append(f"{type(layer).__name__}{shapes}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


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


def _warm_up(layers, batch, device, rounds: int) -> None:
    """Whole-model forward and backward passes first: the first calls in a
    process pay one-off costs (thread pools, allocator, kernel selection)
    that would otherwise land on the first layer's time."""
    for _ in range(rounds):
        x = batch.to(device) if isinstance(batch, torch.Tensor) else tuple(
            t.to(device) for t in batch)
        x = _grad_leaf(x)
        for layer in layers:
            layer.to(device)
            x = layer(x)
        outs = [t for t in _tensors(x) if t.requires_grad]
        if outs:
            torch.autograd.backward([t.sum() for t in outs])
        for layer in layers:
            layer.zero_grad(set_to_none=True)


def _measure_sizes(layers, sample_batch, sizes, repeats, warmup, device, in_context,
                   progress, loss=None) -> tuple[list[list[dict]], list, object]:
    """Per batch size of ``sizes``, every layer's measurement row; per size the
    loss's (forward, backward) seconds (None without ``loss``, measured only
    in context); and the model's output (at the last size). ``loss``:
    (loss_fn, targets of the whole sample batch)."""
    bar = ProgressBar((len(layers) + in_context) * len(sizes), title="profile ") \
        if progress else None
    per_size, loss_times = [], []
    for n in sizes:
        x = _on(_slice(sample_batch, n), device)
        x_n, rows = x, []
        for j, layer in enumerate(layers):
            layer.to(device)
            row, x = _measure_layer(layer, x, n, repeats, warmup, device)
            rows.append(row)
            if bar:
                bar.advance(f"n={n} layer {j} {type(layer).__name__}")
        lt = None
        if in_context:
            sliced = None if loss is None else (loss[0], _on(_slice(loss[1], n), device))
            chained = _chained_times(layers, x_n, repeats, warmup, device, loss=sliced,
                                     split=True)
            rows = [_in_context(row, chained, j) for j, row in enumerate(rows)]
            lt = chained.loss
            if bar:
                bar.advance(f"n={n} every layer in order")
        per_size.append(rows)
        loss_times.append(lt)
    if bar:
        bar.close()
    return per_size, loss_times, x


def _check_loss(loss_fn, targets, n0: int):
    """(loss_fn, targets) to time, None for neither; PlanError for half a pair."""
    if loss_fn is None and targets is None:
        return None
    if loss_fn is None or targets is None:
        given, missing = ("loss_fn", "targets") if targets is None else ("targets", "loss_fn")
        raise PlanError(f"profile() got {given} but no {missing}; the loss is timed on the "
                        f"sample batch's targets, so pass both (or neither, to leave the "
                        f"loss out of the last stage's time)")
    if not callable(loss_fn):
        raise PlanError(f"loss_fn={loss_fn!r} is not callable; pass the function the "
                        f"pipeline will call as loss_fn(output, targets)")
    ts = _tensors(targets)
    if not ts or any(t.dim() == 0 or t.shape[0] < n0 for t in ts):
        shapes = [tuple(t.shape) for t in ts]
        raise PlanError(f"targets of shapes {shapes} do not cover the sample batch of {n0}; "
                        f"pass the targets of those {n0} samples, batch along dim 0")
    return loss_fn, targets


def _busy_cores(n: int, layers, batch, device):
    """A context in which ``n`` forked processes run the model's forward and
    backward over and over, each pinned to a core of its own, this process
    pinned to another (its affinity is restored after)."""
    import contextlib
    import os
    import signal

    from conveyor.runtime.procs.lifetime import die_with_parent

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PlanError(f"alongside={n!r}; use an integer >= 0 (other processes computing "
                        f"while the layers are timed, P - 1 for a run of P ranks on this host)")
    if n == 0:
        return contextlib.nullcontext()
    if device.type != "cpu" or not hasattr(os, "sched_setaffinity") or not hasattr(os, "fork"):
        raise PlanError(f"alongside={n} runs other processes on this machine's other cores; it "
                        f"needs CPU layers on Linux (this is {device}); leave it at 0")
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores) - 1:
        raise PlanError(f"alongside={n} needs {n + 1} cores, one each, but this process may use "
                        f"{len(cores)}; use at most alongside={len(cores) - 1}")

    @contextlib.contextmanager
    def busy():
        parent, kids = os.getpid(), []
        try:
            for k in range(1, n + 1):
                pid = os.fork()
                if pid == 0:  # the child: compute until killed or orphaned, never return
                    try:
                        die_with_parent(parent)
                        os.sched_setaffinity(0, {cores[k]})
                        torch.set_num_threads(1)
                        while os.getppid() == parent:
                            _warm_up(layers, batch, device, 1)
                    finally:
                        os._exit(0)
                kids.append(pid)
            os.sched_setaffinity(0, {cores[0]})
            _warm_up(layers, batch, device, 1)  # with the others running
            yield
        finally:
            os.sched_setaffinity(0, set(cores))
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass

    return busy()


def profile(model, sample_batch, *, repeats: int = 5, warmup: int = 2,
            optimizer: str = "adam", name: str | None = None, device=None,
            progress: bool = True, links: dict | None = None,
            overhead: float | None = None, in_context: bool = True,
            alongside: int = 0, loss_fn=None, targets=None) -> Profile:
    """Measure every layer of ``model`` (an ``nn.Sequential`` or list of layers)
    on ``sample_batch`` (the model's input: a tensor or tuple of tensors, batch
    along dim 0, at least 2 samples).

    ``optimizer``: whose state to count ("adam", "adamw", "momentum", "sgd",
    "none"). ``links``: a measured ``{"latency", "bandwidth"}`` to store (see
    ``measure_links``). ``overhead``: the runtime's seconds per action
    (default: ``links["overhead"]`` when measured, else 0). ``in_context``
    (default): forward and backward times are those of layers run one after
    another as a stage runs them (``_chained_times``); False: each layer
    timed alone, call after call (faster to measure, biased low on CPUs).
    ``alongside`` (CPU): time the layers while that many other processes run
    the whole model's forward and backward, each on a core of its own (this
    process on the first core it may use, they on the next ones), as the
    other ranks of a run on this host do; cores that compute at once slow
    each other down (shared caches and memory), 3-6 % on the 2-core test
    machine. For a run of P ranks on this host, P - 1.
    Returns a Profile. Raises PlanError for an unknown
    optimizer, a batch of fewer than 2 samples, a model that is not a chain,
    or more ``alongside`` than spare cores, or a ``loss_fn`` without
    ``targets`` (or the reverse), targets with fewer samples than the batch,
    or a loss with ``in_context=False``.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise PlanError(f"unknown optimizer {optimizer!r} for the state bytes; choose one of "
                        f"{', '.join(OPTIMIZER_STATE)}")
    layers = layers_of(model)
    first = _tensors(sample_batch)
    if not first or first[0].shape[0] < 2:
        raise PlanError("the sample batch needs at least 2 samples along dim 0 (the profiler "
                        "measures at n, n/2 and n/4 to separate fixed from per-sample time)")
    device = torch.device(device) if device is not None else first[0].device
    n0 = first[0].shape[0]
    loss = _check_loss(loss_fn, targets, n0)
    if loss is not None and not in_context:
        raise PlanError("a loss is timed in context only (after the last layer, feeding its "
                        "backward); drop in_context=False (--alone), or the loss")
    sizes = sorted({n0, max(n0 // 2, 1), max(n0 // 4, 1)}, reverse=True)
    busy = _busy_cores(alongside, layers, sample_batch, device)  # checked before any work
    _warm_up(layers, sample_batch, device, max(warmup, 1))
    with busy:
        per_size, loss_times, x = _measure_sizes(layers, sample_batch, sizes, repeats, warmup,
                                                 device, in_context, progress, loss)
    state = OPTIMIZER_STATE[optimizer]
    if overhead is None:
        overhead = float((links or {}).get("overhead") or 0.0)
    out = []
    for j, layer in enumerate(layers):
        a = per_size[0][j]
        pbytes = sum(p.numel() * p.element_size() for p in layer.parameters())
        out.append(LayerProfile(
            name=str(j), kind=type(layer).__name__,
            **{k: Affine.fit([(n, rows[j][k]) for n, rows in zip(sizes, per_size)])
               for k in ("forward", "backward", "input_grad", "weight_grad")},
            out_bytes=a["out_bytes"], saved_bytes=a["saved_bytes"],
            saves_input=a["saves_input"], saves_output=a["saves_output"], param_bytes=pbytes,
            optim_bytes=state * pbytes, w_out_bytes=a["w_out_bytes"], w_bytes=a["w_bytes"],
            w_calls=a["w_calls"]))
    in_bytes = _nbytes(sample_batch) / n0
    loss_prof = None
    if loss is not None:
        loss_prof = LossProfile(*(Affine.fit([(n, lt[k]) for n, lt in zip(sizes, loss_times)])
                                  for k in (0, 1)))
    return Profile(model={"name": name or type(model).__name__, "layers": len(layers),
                          "fingerprint": fingerprint(model)},
                   layers=out, input_bytes=in_bytes, batch=sizes, device=str(device),
                   repeats=repeats, links=links, overhead=float(overhead), loss=loss_prof,
                   meta={"torch": torch.__version__, "optimizer": optimizer,
                         "timing": "in context" if in_context else "alone",
                         "alongside": alongside,
                         "loss": None if loss_fn is None else getattr(
                             loss_fn, "__qualname__", type(loss_fn).__name__),
                         # the runtime keeps each micro-batch's weighted loss, a scalar
                         # of the model output's dtype, until its backward
                         "loss_bytes": _tensors(x)[0].element_size()})


# The tiny pipelines ``measure_links`` times for the runtime's own work per
# action and per transfer: GPipe and 1F1B on its ranks, M micro-batches of
# one sample, 4 numbers wide, a layer per rank (see conveyor.plan.overhead).
TINY = ("gpipe", "1f1b")
TINY_M, TINY_WIDTH, TINY_STEPS, TINY_WARMUP = 8, 4, 7, 2


def tiny_steps(ctx, transport: str = "dist") -> dict[str, float]:
    """Per schedule of TINY, the median step time (rank 0's measured
    timelines) of a pipeline of tiny layers on ``ctx``'s ranks, its
    transfers over ``transport`` (PipelineConfig.transport); the schedules
    take turns, so load hits both alike. Rank 0's answer is the one to use
    (``fit_tiny``); the others return theirs, without timelines."""
    from torch import nn

    from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig

    pipes = {}
    for name in TINY:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(TINY_WIDTH, TINY_WIDTH)
                                for _ in range(max(ctx.world_size, 2))])
        pipes[name] = Pipeline(model, loss_fn=_tiny_loss, optimizer=None, schedule=name,
                               microbatches=TINY_M, ctx=ctx,
                               config=PipelineConfig(transport=transport))
    x, y = torch.randn(TINY_M, TINY_WIDTH), torch.randn(TINY_M, TINY_WIDTH)
    times: dict[str, list[float]] = {name: [] for name in TINY}
    for k in range(TINY_WARMUP + TINY_STEPS):
        for name, pipe in pipes.items():
            res = pipe.step(x, y, record=k >= TINY_WARMUP)
            if res.timeline is not None:
                times[name].append(res.timeline.step_time)
    return {name: statistics.median(t) for name, t in times.items() if t}


def fit_tiny(steps: dict[str, float], P: int,
             bandwidth: float | None = None, host: dict | None = None) -> tuple[float, float]:
    """(overhead per action, latency per transfer) in seconds from
    ``tiny_steps``'s medians on P ranks (``conveyor.plan.overhead``); on one
    rank there is no transfer and the latency is 0. ``host``: the runtime's
    time per send and receive (``transfer_times``), charged in the fit so
    that the overhead is what an action costs beyond them."""
    from conveyor.plan.overhead import fit_overhead, fit_runtime
    from conveyor.schedule import build_schedule

    bw = bandwidth or float("inf")
    flat, chain = (build_schedule(name, P, TINY_M) for name in TINY)
    if P == 1:
        return fit_overhead(chain, steps[TINY[1]], bandwidth=bw), 0.0
    return fit_runtime(flat, steps[TINY[0]], chain, steps[TINY[1]], bandwidth=bw,
                       activation_bytes=4 * TINY_WIDTH, host=host)


class _Scale(torch.nn.Module):
    """x * w, feature by feature: a layer that costs next to nothing per byte."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


# ``transfer_times``: GPipe on 2 ranks, M micro-batches of one sample, at two
# widths (float32 numbers per sample: 16 B and 256 KiB per message).
HOST_WIDTHS = (4, 1 << 16)


def transfer_times(ctx, transport: str = "dist") -> dict | None:
    """The runtime's own time per send and per receive, as ``{"send":
    {"fixed": s, "per_byte": s}, "recv": {...}}``, from the recorded SEND and
    RECV events of GPipe pipelines of next-to-free layers on ``ctx``'s first
    two ranks at two message sizes (HOST_WIDTHS): a send is the median of
    its events; a receive, the lower quartile of its events (some of them
    wait for their message, which the fit must not count). Rank 0 returns
    it, the others None. On the 2-core test machine over shared memory a
    send of 700 KB took 0.06-0.17 ms in a real-compute run, where one
    action could move two messages and the fitted overhead covered one."""
    from torch import nn

    from conveyor.runtime.train.pipeline import Pipeline, PipelineConfig
    from conveyor.schedule.ir import RECV_B, RECV_F, SEND_B, SEND_F

    got = {}
    for width in HOST_WIDTHS:
        model = nn.Sequential(*[_Scale(width) for _ in range(max(ctx.world_size, 2))])
        pipe = Pipeline(model, loss_fn=_tiny_loss, optimizer=None, schedule="gpipe",
                        microbatches=TINY_M, ctx=ctx, config=PipelineConfig(transport=transport))
        x, y = torch.randn(TINY_M, width), torch.randn(TINY_M, width)
        sends, recvs = [], []
        for k in range(TINY_WARMUP + TINY_STEPS):
            res = pipe.step(x, y, record=k >= TINY_WARMUP)
            if res.timeline is not None:
                for e in res.timeline.events:
                    kind = e.action.kind
                    if kind in (SEND_F, SEND_B):
                        sends.append(e.duration)
                    elif kind in (RECV_F, RECV_B):
                        recvs.append(e.duration)
        if ctx.rank == 0:
            got[4 * width] = (statistics.median(sends), statistics.quantiles(recvs, n=4)[0])
    if ctx.rank != 0:
        return None
    (n0, (s0, r0)), (n1, (s1, r1)) = sorted(got.items())

    def line(t0, t1):
        per = max((t1 - t0) / (n1 - n0), 0.0)
        return {"fixed": max(t0 - per * n0, 0.0), "per_byte": per}

    return {"send": line(s0, s1), "recv": line(r0, r1)}


def _tiny_loss(out, y):
    return ((out - y) ** 2).mean()


def _ping_pong(ctx, sizes: list[int], rounds: int, overhead: bool,
               transport: str = "dist") -> dict | None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # as a rank runs
    if transport == "shm":
        from conveyor.runtime.transport.shm import ShmTransport

        shm = ShmTransport(rank=ctx.rank, pairs={(0, 1), (1, 0)})
        peer = 1 - ctx.rank

        def send(buf):
            shm.isend(buf, peer, 0).wait(None)

        def recv(buf):
            shm.irecv(buf, peer, 0).wait(None)
    else:
        def send(buf):
            dist.send(buf, 1 - ctx.rank)

        def recv(buf):
            dist.recv(buf, 1 - ctx.rank)
    out = {}
    for nbytes in sizes:
        buf = torch.zeros(max(nbytes // 4, 1), dtype=torch.float32)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            if ctx.rank == 0:
                send(buf)
                recv(buf)
            else:
                recv(buf)
                send(buf)
            times.append((time.perf_counter() - t) / 2)  # one way
        out[nbytes] = statistics.median(times)
    steps = tiny_steps(ctx, transport) if overhead else {}
    host = transfer_times(ctx, transport) if overhead else None
    return {"one_way": out, "tiny_steps": steps, "host": host} if ctx.rank == 0 else None


_WIRE = {"dist": "gloo", "shm": "shared-memory"}


def measure_links(*, sizes=(4, 4 << 20), rounds: int = 20, overhead: bool = True,
                  transport: str = "dist") -> dict:
    """Latency (s) and bandwidth (bytes/s) between two local ranks over
    ``transport`` (PipelineConfig.transport: "dist", gloo here; "shm",
    shared memory), one launch of 2 ranks; the result names the transport,
    and a run should use the one its plan was measured on.

    Bandwidth: the slope of a blocking ping-pong's one-way time between a
    tiny and a large message (median of ``rounds`` each). With ``overhead``
    (default), "latency" and "overhead" (the runtime's seconds per action)
    are fitted to the median steps of two pipelines of tiny layers
    (``conveyor.plan.overhead.fit_runtime``): what a transfer and an action
    cost as the runtime runs them, beyond the runtime's own time per send
    and per receive ("send" and "recv", ``transfer_times``), which the
    planner charges to the actions beside each transfer across ranks;
    ``profile(links=...)`` copies "overhead" into ``Profile.overhead``.
    Without it, "latency" is the ping-pong's tiny one-way time (kept as "ping_pong_latency" either way). The ranks are
    not pinned: on the 2-core test machine pinned tiny 1F1B steps measured
    6-16 ms between launches (unpinned 6-10 ms), and predictions of pinned
    real-compute runs from the unpinned fit were the closer
    (benchmarks/planner.md)."""
    from conveyor.runtime.procs.launcher import launch

    if transport not in ("dist", "shm"):
        raise PlanError(f"transport={transport!r}; use 'dist' or 'shm'")
    got = launch(_ping_pong, nprocs=2, args=(list(sizes), rounds, overhead, transport))[0]
    one_way = got["one_way"]
    small, large = min(sizes), max(sizes)
    slope = (one_way[large] - one_way[small]) / (large - small)
    res = {"latency": one_way[small], "bandwidth": 1 / slope if slope > 0 else None,
           "ping_pong_latency": one_way[small], "measured": {str(k): v for k, v in one_way.items()},
           "method": f"{_WIRE[transport]} ping-pong, 2 ranks", "transport": transport}
    if overhead:
        med, host = got["tiny_steps"], got["host"]
        res["send"], res["recv"] = host["send"], host["recv"]
        res["overhead"], res["latency"] = fit_tiny(med, 2, res["bandwidth"], host)
        res["tiny_steps"] = med
        res["method"] = (f"bandwidth: {_WIRE[transport]} ping-pong, 2 ranks; send and recv: "
                         f"the runtime's SEND and RECV events in GPipe on 2 ranks at "
                         f"{4 * HOST_WIDTHS[0]} B and {4 * HOST_WIDTHS[1] >> 10} KiB per "
                         f"message; latency and overhead fitted to "
                         f"the median of {TINY_STEPS} steps each of {' and '.join(TINY)} on 2 "
                         f"ranks, M={TINY_M} of 1 sample, {TINY_WIDTH}-wide Linear layers, "
                         f"with those sends and receives charged")
    return res
