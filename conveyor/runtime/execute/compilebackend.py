"""The torch.compile backend of conveyor's compiled stages (see ``compiled``):
inductor, each graph's backward split into I and W (``compilesplit``) when
the schedule has I/W, and the hooks on dynamo's compile start and end that
time each stage's compiling, tell the hang watch, and turn duck sizing off.
"""

from __future__ import annotations

import copy
import time
import warnings
from functools import partial

import torch
import torch.fx.experimental._config as _shape_config
from torch import nn

from conveyor.runtime.execute.compilesplit import NoSplit, SplitBackward, split_backward
from conveyor.runtime.procs import hang

__all__ = ["CompileFallback"]


class CompileFallback(UserWarning):
    """A part of a stage runs uncompiled, or with its backward unsplit."""


# Process-wide: every graph this process compiles for conveyor's stages,
# and the seconds dynamo spent compiling them (tracing included).
_TOTAL = {"graphs": 0, "seconds": 0.0}
_CURRENT: list = [None]  # the CompiledStage being called, for _on_start and the backend
_OPEN: dict = {}  # a compile of a stage in progress: its start and saved config


def _on_start(_args) -> None:
    """dynamo starts compiling a frame: if it is one of conveyor's stages,
    time it, tell the hang watch, and compile without duck sizing (two sizes
    equal on the first call, a batch of 8 and 8 tokens, would otherwise share
    one symbol, and the first call where they differ would compile again)."""
    if _CURRENT[0] is None or _OPEN:
        return
    _OPEN.update(t0=time.perf_counter(), duck=_shape_config.use_duck_shape)
    _shape_config.use_duck_shape = False
    hang.compiling(True)


def _on_end(_args) -> None:
    if not _OPEN:
        return
    _shape_config.use_duck_shape = _OPEN["duck"]
    _TOTAL["seconds"] += time.perf_counter() - _OPEN["t0"]
    _OPEN.clear()
    hang.compiling(False)


class _Backend:
    """A torch.compile backend: inductor, each backward split into I and W
    (``split``) or as torch.compile compiles it (one node; for schedules
    without I/W, where the split would only cost: the parts cannot fuse,
    and what dW reads from dI is written to memory).

    One per (options, split) in a process: dynamo reuses a compiled graph
    for another module of the same structure (another stage, or the next
    pipeline's) only under the same backend object."""

    def __init__(self, options: dict, split: bool):
        self.options, self.split = options, split
        self.splits: list[SplitBackward] = []

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        if not self.split:
            _TOTAL["graphs"] += 1
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return compile_fx(gm, example_inputs, config_patches=self.options)
        weight_pos = {k for k, t in enumerate(example_inputs) if isinstance(t, nn.Parameter)}
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None
                  for t in example_inputs]
        spare = copy.deepcopy(gm)  # compile_fx may rewrite gm; this one runs if the split fails
        failed: list[str] = []
        _TOTAL["graphs"] += 1
        with torch._functorch.config.patch(
                enable_autograd_cache=False,  # its entries hold the unsplit backward
                donated_buffer=False,          # I keeps the graph for W
                force_non_lazy_backward_lowering=True):  # all compiling in the forward
            compiled = compile_fx(gm, example_inputs, config_patches=self.options,
                                  inner_compile=partial(self._inner, weight_pos, shapes, failed))
        if failed:
            stage = _CURRENT[0]
            msg = (f"conveyor compile: {stage.label if stage else 'a stage'}: a graph of "
                   f"{len(gm.graph.nodes)} nodes runs uncompiled: its backward cannot be split "
                   f"into I and W ({failed[0]})")
            if stage is not None:
                stage.fallbacks.append(msg)
            warnings.warn(msg, CompileFallback, stacklevel=2)
            return spare.forward
        return compiled

    def _inner(self, weight_pos, shapes, failed, gm, example_inputs, **kw):
        from torch._inductor.compile_fx import compile_fx_inner

        if not kw.get("is_backward"):
            return compile_fx_inner(gm, example_inputs, **kw)
        try:
            _check_outputs(gm, weight_pos, shapes)
            split = split_backward(gm, weight_pos)
        except NoSplit as e:
            failed.append(str(e))
            return compile_fx_inner(gm, example_inputs, **kw)
        dI = compile_fx_inner(split.dI, example_inputs, **kw)
        dW = compile_fx_inner(split.dW, [*example_inputs, *(n.meta["val"] for n in split.stash)],
                              **kw)
        sb = SplitBackward(split, dI, dW)
        self.splits.append(sb)
        return sb


def _check_outputs(gm, weight_pos: set, shapes: list) -> None:
    """The backward's output k must be the gradient of the forward's input k
    (parameters found by position); NoSplit when AOTAutograd changed that."""
    outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if len(outs) != len(shapes):
        raise NoSplit(f"its backward returns {len(outs)} gradients for {len(shapes)} inputs")
    for k in weight_pos:
        o = outs[k]
        val = o.meta.get("val") if hasattr(o, "meta") else None
        if o is not None and (val is None or tuple(val.shape) != shapes[k]):
            raise NoSplit(f"its backward's output {k} is not the gradient of parameter "
                          f"input {k} {shapes[k]}")
