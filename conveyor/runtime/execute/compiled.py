"""``torch.compile`` per stage: ``PipelineConfig(compile=True | {options})``.

Each rank compiles the stages it holds: a stage's forward is traced by
dynamo where the interpreter calls it (inside the precision policy's
autocast, so the graph holds the casts the policy asks for; around an
activation-checkpointed stage, so the recomputation is compiled into the
backward) and compiled by inductor with the given options. Parts dynamo
cannot trace (graph breaks) run eagerly between the compiled graphs, as
torch.compile does.

Under a schedule with I/W actions, the backward of each graph is split
into I and W (``compilesplit``): a schedule's I runs only the
input-gradient part and its W only the weight-gradient part, from what I
stashed; its B actions (dualpipev has both) run the two back to back, so
they give the same gradients as I + W bit for bit. Under a schedule
without I/W, the backward compiles as torch.compile compiles it, in one
piece (the split costs there: its parts cannot fuse, and what dW reads
from dI is written to memory).

Fallbacks, each announced by one ``CompileFallback`` warning naming the
stage and kept in ``CompiledStages.fallbacks``:

- a graph whose backward cannot be split (AOTAutograd rearranged its inputs,
  or its backward has side effects) runs uncompiled, so splitgrad splits it
  as any eager module; the rest of the stage stays compiled;
- a stage whose calls need more than ``RECOMPILE_LIMIT`` graphs (stage
  structures times shape classes, per process): calls that would need a
  new graph run uncompiled, as torch.compile does at its limit;
- a stage compiled by hand (a ``torch.compile``d module given to
  ``from_stages``) under a schedule with I/W: its backward cannot be split,
  so I and W each run all of it (the gradients are right, the backward
  costs twice); pass the plain module and ``compile=True`` instead.

Shapes: the stages compile with static shapes while every micro-batch has
the same shape; under ``varying_shapes``, side inputs, or micro-batches of
different sizes (``set_dynamic``) they compile with dynamic shapes, one graph
per shape class: the rank and dtype of each input, and whether a varying
size is 0 or 1 (torch specialises those). Feature sizes stay static, tied
to the parameters' shapes.
"""

from __future__ import annotations

import difflib
import logging
import sys
import warnings

import torch
from torch import nn

from conveyor.errors import ConveyorError, PipelineError
from conveyor.runtime.errors import StageError
from conveyor.runtime.execute.compilebackend import (
    _CURRENT,
    _TOTAL,
    CompileFallback,
    _Backend,
    _on_end,
    _on_start,
)

__all__ = ["CompileFallback", "CompileError", "CompiledStage", "CompiledStages",
           "resolve_compile", "compile_stages", "for_pipeline", "warn_hand_compiled",
           "describe_module", "CompiledLayer", "compiled_layers"]


class CompileError(StageError):
    """A stage failed to compile (its eager forward works)."""


_BACKENDS: dict = {}
_HOOKED = [False]


class _LimitWatch(logging.Filter):
    """dynamo says (in a log record) that a region reached its recompile
    limit and runs uncompiled from now on: if it is a stage's, warn once."""

    def filter(self, record: logging.LogRecord) -> bool:
        stage = _CURRENT[0]
        if stage is not None and str(record.msg).startswith("torch._dynamo hit config."):
            msg = (f"conveyor compile: {stage.label}: torch.compile reached its recompile "
                   f"limit ({RECOMPILE_LIMIT} graphs): calls that need a new graph run "
                   f"uncompiled from now on; TORCH_LOGS=recompiles says why it recompiled")
            stage.fallbacks.append(msg)
            warnings.warn(msg, CompileFallback, stacklevel=2)
        return True


def _install_callbacks() -> None:
    """Once per process: conveyor's hooks on dynamo's compile start and end
    and on its recompile-limit message (they do nothing for compiles outside
    conveyor's stages)."""
    if not _HOOKED[0]:
        _HOOKED[0] = True
        from torch._dynamo.callback import callback_handler

        callback_handler.register_start_callback(_on_start)
        callback_handler.register_end_callback(_on_end)
        logging.getLogger("torch._dynamo.convert_frame").addFilter(_LimitWatch())


def resolve_compile(value) -> dict | None:
    """``PipelineConfig.compile`` -> the options to compile with (None: off).

    True: inductor's defaults ({}); a dict: inductor options, as
    ``torch.compile(options=...)`` takes them, each checked the way torch
    checks them. Raises PipelineError naming the rejected option."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise _same(PipelineError(
            f"compile={value!r}; use True, False or a dict of torch.compile options "
            f"(e.g. {{'max_autotune': True}})"))
    for key, val in value.items():
        if not isinstance(key, str):
            raise _same(PipelineError(f"compile option {key!r} is not a string; the keys "
                                      f"are inductor option names"))
        try:
            torch.compile(nn.Identity(), options={key: val})  # checks, compiles nothing
        except Exception as e:  # torch raises RuntimeError, naming the option
            why = str(e).split(", known options")[0]
            known = torch._inductor.list_options()
            name = key.replace("-", "_")
            near = difflib.get_close_matches(name, known, n=1)
            hint = ("" if name in known else f"; did you mean {near[0]!r}?" if near
                    else "; torch._inductor.list_options() lists them")
            raise _same(PipelineError(f"compile option {key!r}={val!r} is rejected by "
                                      f"torch.compile ({why}){hint}")) from None
    return dict(value)


def _same(e: ConveyorError) -> ConveyorError:
    e.same_on_every_rank = True  # a bad option: every rank rejects it alike
    return e


def describe_module(m: nn.Module, limit: int = 4) -> str:
    """``SequentialStage(Linear, Tanh, ...)``: a module and its first children's types."""
    kids = list(m.children())
    inner = ", ".join(describe_module(k, limit) if k is kids[0] and len(kids) == 1 else
                      type(k).__name__ for k in kids[:limit])
    if len(kids) > limit:
        inner += f", ... {len(kids)} in all"
    return f"{type(m).__name__}({inner})" if kids else type(m).__name__


def _run(module, *args, **kwargs):
    """What conveyor compiles: a call of the stage's module. One compiled
    ``_run`` per backend and shape mode serves every stage (a stage of the
    same structure as one compiled before reuses its graphs), in a region of
    its own: torch.compile's other users do not count against its limit."""
    return module(*args, **kwargs)


RECOMPILE_LIMIT = 64  # graphs per region: stage structures x shape classes
_FNS: dict = {}


def _compiled_run(backend: "_Backend", dynamic: bool):
    key = (id(backend), dynamic)
    if key not in _FNS:
        _FNS[key] = torch.compile(_run, backend=backend, dynamic=True if dynamic else None,
                                  isolate_recompiles=True, recompile_limit=RECOMPILE_LIMIT)
    return _FNS[key]


class CompiledStage:
    """A stage's forward, compiled; called as the module would be.

    ``graphs``: graphs compiled while calling it (recompiles included);
    ``compile_s``: seconds spent compiling them (dynamo, AOTAutograd and
    inductor, the backward included)."""

    def __init__(self, module: nn.Module, label: str, backend: _Backend, *, rank: int,
                 stage: int, fallbacks: list[str]):
        self.module, self.label, self.backend = module, label, backend
        self.rank, self.stage = rank, stage
        self.fallbacks = fallbacks  # shared by the pipeline's stages
        self.dynamic = False
        self.graphs = 0
        self.compile_s = 0.0

    def __call__(self, *args, **kwargs):
        fn = _compiled_run(self.backend, self.dynamic)
        graphs, seconds = _TOTAL["graphs"], _TOTAL["seconds"]
        _CURRENT[0] = self
        try:
            return fn(self.module, *args, **kwargs)
        except ConveyorError:
            raise
        except Exception as e:
            raise self._failure(e, args, kwargs) from e
        finally:
            _CURRENT[0] = None
            self.graphs += _TOTAL["graphs"] - graphs
            self.compile_s += _TOTAL["seconds"] - seconds

    def _failure(self, e: Exception, args, kwargs) -> Exception:
        """The user's own error if the eager forward fails the same way (so the
        interpreter blames the layer as without compile), else CompileError."""
        try:
            self.module(*args, **kwargs)
        except Exception as eager:
            return eager
        root = e
        while root.__cause__ is not None:  # dynamo wraps the compiler's own error
            root = root.__cause__
        text = " ".join(str(root).split())[:300]
        return CompileError(
            f"{self.label} failed to compile ({type(root).__name__}: {text}); its eager "
            f"forward runs, so the cause is torch.compile: run with compile=False, or set "
            f"TORCH_LOGS=+dynamo for where it stopped", rank=self.rank, stage=self.stage,
            original=e)


class CompiledStages(dict):
    """{stage: CompiledStage} of this rank, for the interpreter to call."""

    fallbacks: list[str]

    def set_dynamic(self, on: bool) -> None:
        """Compile the next calls with dynamic shapes (True) or static ones."""
        for c in self.values():
            c.dynamic = on

    def totals(self) -> tuple[int, float]:
        """(graphs compiled, seconds spent compiling) by this rank's stages so far."""
        return (sum(c.graphs for c in self.values()), sum(c.compile_s for c in self.values()))


def compile_stages(stages: dict[int, nn.Module], options: dict, *, rank: int,
                   split: bool = True, kind: str = "stage") -> CompiledStages:
    """This rank's ``stages`` compiled with inductor ``options``, each
    backward split into I and W (``split``) or not. Returns CompiledStages;
    nothing compiles until the first call. ``kind`` names them in messages
    ("rank 0 stage 1 (...)")."""
    _install_callbacks()
    key = (tuple(sorted((k, repr(v)) for k, v in options.items())), split)
    backend = _BACKENDS.get(key) or _BACKENDS.setdefault(key, _Backend(options, split))
    out = CompiledStages()
    out.fallbacks = []
    for s, m in stages.items():
        out[s] = CompiledStage(m, f"rank {rank} {kind} {s} ({describe_module(m)})", backend,
                               rank=rank, stage=s, fallbacks=out.fallbacks)
    return out


def for_pipeline(stages: dict[int, nn.Module], option, *, rank: int,
                 schedule) -> CompiledStages | None:
    """What a Pipeline runs its stages with: CompiledStages for
    ``compile=True | {options}``, None for compile off (after warning about
    stages compiled by hand when ``schedule`` has I/W)."""
    options = resolve_compile(option)
    split = any(a.kind in ("I", "W") for _, _, a in schedule)
    if options is None:
        if split:
            warn_hand_compiled(stages, rank=rank)
        return None
    return compile_stages(stages, options, rank=rank, split=split)


class CompiledLayer(nn.Module):
    """A module whose calls go through its compiled form (the profiler times
    layers this way); its parameters are the module's."""

    def __init__(self, module: nn.Module, call: CompiledStage):
        super().__init__()
        self.inner = module
        self._call = call

    def forward(self, *args, **kwargs):
        return self._call(*args, **kwargs)


def compiled_layers(layers: list[nn.Module], option) -> list[nn.Module]:
    """``layers`` each compiled on its own (``option`` as ``PipelineConfig.
    compile``), with dynamic shapes (the profiler runs several batch sizes);
    ``layers`` itself when compile is off."""
    options = resolve_compile(option)
    if options is None:
        return layers
    calls = compile_stages(dict(enumerate(layers)), options, rank=0, kind="layer")
    calls.set_dynamic(True)
    return [CompiledLayer(m, calls[j]) for j, m in enumerate(layers)]


def warn_hand_compiled(stages: dict[int, nn.Module], *, rank: int) -> list[str]:
    """For a schedule with I/W run without ``compile``: warn once per stage
    that holds a module compiled by hand (its backward cannot be split).
    Returns the messages."""
    out = []
    for s, m in stages.items():
        if _hand_compiled(m):
            msg = (f"conveyor compile: rank {rank} stage {s} ({describe_module(m)}) holds a "
                   f"module compiled by hand with torch.compile: its backward is one node, so "
                   f"I and W each run all of it (right gradients, twice the backward); give "
                   f"the plain module and PipelineConfig(compile=True)")
            warnings.warn(msg, CompileFallback, stacklevel=2)
            out.append(msg)
    return out


def _hand_compiled(m: nn.Module) -> bool:
    # Without torch._dynamo imported nothing was compiled (and importing it
    # here would cost every pipeline seconds).
    frames = sys.modules.get("torch._dynamo.eval_frame")
    return frames is not None and any(isinstance(k, frames.OptimizedModule)
                                      for k in m.modules())
