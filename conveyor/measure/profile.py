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

import torch

from conveyor.errors import PlanError
from conveyor.measure.busy import _busy_cores
from conveyor.measure.chain import _measure_sizes, _warm_up, expected_work
from conveyor.measure.fit import fit_tiny, tiny_steps
from conveyor.measure.layer import _nbytes, _tensors
from conveyor.measure.links import measure_links, transfer_times
from conveyor.plan.profile import Affine, LayerProfile, LossProfile, Profile
from conveyor.progress import WeightedProgress
from conveyor.runtime.execute.compiled import compiled_layers
from conveyor.runtime.execute.stages import fingerprint, layers_of

__all__ = ["profile", "fingerprint", "measure_links", "tiny_steps", "fit_tiny", "transfer_times",
           "OPTIMIZER_STATE"]

# Optimizer state per parameter byte: Adam keeps two moments, SGD with
# momentum one buffer.
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd": 0, "momentum": 1, "none": 0}

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


def profile(model, sample_batch, *, repeats: int = 5, warmup: int = 2,
            optimizer: str = "adam", name: str | None = None, device=None,
            progress: bool | WeightedProgress = True, links: dict | None = None,
            overhead: float | None = None, in_context: bool = True,
            alongside: int = 0, loss_fn=None, targets=None, compile=False) -> Profile:
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
    machine. For a run of P ranks on this host, P - 1. ``progress``: show a
    bar on stderr (weighted by each step's expected time, with an ETA and
    the phase), or a WeightedProgress to advance (``conveyor profile``).
    ``compile``: as ``PipelineConfig(compile=...)``: time each layer compiled on
    its own (with the split backward for I and W; no fusion across layers,
    which a compiled stage may add), compiling in the warm-up.
    Returns a Profile. Raises PlanError for an unknown
    optimizer, a batch of fewer than 2 samples, a model that is not a chain,
    or more ``alongside`` than spare cores, or a ``loss_fn`` without
    ``targets`` (or the reverse), targets with fewer samples than the batch,
    or a loss or ``compile`` with ``in_context=False``.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise PlanError(f"unknown optimizer {optimizer!r} for the state bytes; choose one of "
                        f"{', '.join(OPTIMIZER_STATE)}")
    layers = layers_of(model)
    timed = compiled_layers(layers, compile)
    first = _tensors(sample_batch)
    if not first or first[0].shape[0] < 2:
        raise PlanError("the sample batch needs at least 2 samples along dim 0 (the profiler "
                        "measures at n, n/2 and n/4 to separate fixed from per-sample time)")
    device = torch.device(device) if device is not None else first[0].device
    n0 = first[0].shape[0]
    loss = _check_loss(loss_fn, targets, n0)
    if compile and not in_context:
        raise PlanError("compiled layers are timed in context only (their I and W are the "
                        "split backward's, which timing alone does not run); drop "
                        "in_context=False (--alone), or compile")
    if loss is not None and not in_context:
        raise PlanError("a loss is timed in context only (after the last layer, feeding its "
                        "backward); drop in_context=False (--alone), or the loss")
    sizes = sorted({n0, max(n0 // 2, 1), max(n0 // 4, 1)}, reverse=True)
    busy = _busy_cores(alongside, layers, sample_batch, device)  # checked before any work
    bar = progress if isinstance(progress, WeightedProgress) else (
        WeightedProgress(title="profile ") if progress else None)
    if bar is not None:
        bar.phase("warm-up", f"{max(warmup, 1)} passes of the whole model")
    fwd, bwd = _warm_up(timed, sample_batch, device, max(warmup, 1))
    work = expected_work(fwd, bwd, sizes, warmup + repeats, in_context,
                         [type(layer).__name__ for layer in layers])
    if bar is not None:
        bar.expect(sum(w for _, _, w in work))
        bar.phase(*work[0][:2])
    with busy:
        per_size, loss_times, x = _measure_sizes(timed, sample_batch, sizes, repeats, warmup,
                                                 device, in_context, bar, loss, work)
    if bar is not None and bar is not progress:
        bar.close()
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
                         "compile": compile if compile else False,
                         "alongside": alongside,
                         "loss": None if loss_fn is None else getattr(
                             loss_fn, "__qualname__", type(loss_fn).__name__),
                         # the runtime keeps each micro-batch's weighted loss, a scalar
                         # of the model output's dtype, until its backward
                         "loss_bytes": _tensors(x)[0].element_size()})
