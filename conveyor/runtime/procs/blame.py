"""Who is to blame when a stage's forward raises: a layer, or the cut before it.

Decided from facts, never from the error's text:

* which module raised: the innermost frame of the traceback whose ``self``
  is one of the stage's modules (a layer's ``forward`` is a Python frame; the
  lookup costs nothing until something fails);
* whether the stage's input itself fits its first layer: checked against what
  that layer declares (``in_features`` of a Linear, ``in_channels`` of a
  convolution, ``normalized_shape`` of a LayerNorm, ``num_features`` of a
  batch norm, the dtype of its parameters).

The cut is blamed only when the first layer raised and the input it received
from the previous stage does not fit it. Otherwise the failing layer is named.
"""

from __future__ import annotations

from torch import nn

__all__ = ["blame", "failing_module", "input_mismatch", "layer_name"]


def failing_module(stage: nn.Module, exc: BaseException) -> nn.Module | None:
    """The innermost module of ``stage`` whose code was running when ``exc`` was
    raised, or None when no frame of the traceback belongs to one."""
    mine = {id(m) for m in stage.modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in mine:
            found = obj
        tb = tb.tb_next
    return found


def _first_leaf(stage: nn.Module) -> nn.Module:
    for m in stage.modules():
        if not any(True for _ in m.children()):
            return m
    return stage


def _show(x) -> str:
    return ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in x)


def input_mismatch(layer: nn.Module, x: tuple) -> str | None:
    """How the tensors ``x`` fail to fit what ``layer`` declares it takes, or
    None when they fit or the layer declares nothing this module knows."""
    if len(x) != 1:
        return None
    t = x[0]
    params = [p for p in layer.parameters(recurse=False) if p.is_floating_point()]
    if params and t.is_floating_point() and t.dtype != params[0].dtype:
        return f"it takes {str(params[0].dtype).replace('torch.', '')} but got {_show(x)}"
    if isinstance(layer, nn.Linear) and (t.dim() == 0 or t.shape[-1] != layer.in_features):
        return f"it takes {layer.in_features} features in the last dimension but got {_show(x)}"
    if isinstance(layer, nn.modules.conv._ConvNd):
        nd = len(layer.kernel_size)
        if t.dim() not in (nd + 1, nd + 2) or t.shape[-nd - 1] != layer.in_channels:
            return (f"it takes {layer.in_channels} channels ({nd + 2}-d input) but got "
                    f"{_show(x)}")
    if isinstance(layer, nn.LayerNorm):
        want = tuple(layer.normalized_shape)
        if tuple(t.shape[t.dim() - len(want):]) != want:
            return f"it normalizes over {want} but got {_show(x)}"
    if isinstance(layer, nn.modules.batchnorm._NormBase) and (
            t.dim() < 2 or t.shape[1] != layer.num_features):
        return f"it takes {layer.num_features} features in dimension 1 but got {_show(x)}"
    return None


def layer_name(stage: nn.Module, module: nn.Module) -> str:
    """``layer 1 (Linear(in_features=7, ...))``, or a dotted path for a module
    nested inside a layer."""
    head = repr(module).splitlines()[0]
    for name, m in stage.named_modules():
        if m is module:
            return f"layer {name} ({head})" if name else f"its forward ({head})"
    return head


def blame(stage: nn.Module, s: int, x: tuple, exc: BaseException) -> tuple[str, str | None]:
    """(what failed, the cut's fault or None). The cut's fault is a sentence
    saying how the input misfits the first layer, given only when the first
    layer raised and the input does not fit it."""
    culprit = failing_module(stage, exc)
    if culprit is None:
        return f"stage {s}", None
    if s > 0 and culprit is _first_leaf(stage):
        why = input_mismatch(culprit, x)
        if why is not None:
            return layer_name(stage, culprit), why
    return layer_name(stage, culprit), None
