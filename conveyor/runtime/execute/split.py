"""Cut a model by module name, and build only this rank's stages.

Many models are a chain: embed -> blocks -> norm -> head, with the blocks in
one ``ModuleList``. Their children, in registration order and with each
``ModuleList`` opened up, are the pieces of that chain:
``["embed", "layers.0", ..., "layers.11", "norm", "head"]``. A stage is a run
of consecutive pieces, named either by where stages begin
(``split_points=["layers.4", "layers.8"]``) or per stage, as torchtitan users
write module lists (``[["embed", "layers.0", ...], [...], ...]``).

A stage (``Chain``) keeps each piece under its original path, so its
parameter names are the model's (``layers.4.attn.weight``), and calls the
pieces in order, passing side inputs (keyword arguments) to each piece whose
forward accepts them.

No rank needs the whole model: ``build_stage`` constructs the model with its
parameters on the meta device (shapes only, no memory) and its buffers as
the constructor makes them, keeps this stage's pieces, allocates them for
real and fills them from a seed or from a full or sharded state dict.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from conveyor.errors import PartitionError
from conveyor.runtime.execute.stages import accepts, side_for

__all__ = ["Chain", "chain_pieces", "stage_names", "split_by_names", "build_stage",
           "init_from_seed", "param_bytes", "params_on_meta"]


def chain_pieces(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's pieces in call order: its children in registration order,
    each ``nn.ModuleList`` opened into its items (``layers.0``, ``layers.1``...)."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            out += [(f"{name}.{i}", m) for i, m in enumerate(child)]
        else:
            out.append((name, child))
    return out


class Chain(nn.Module):
    """Consecutive pieces of a model, called in order; a tuple output is
    spread over the next piece's positional arguments.

    forward(*inputs, **side) -> the last piece's output; each piece gets the
    side inputs its forward accepts.

    ``export_names``: {this stage's state-dict key: the names the original
    model gives that tensor}, from the model's ``export_names()`` when it has
    one (the Hugging Face adapter maps its chain names to the HF model's);
    None: the stage's keys are the model's names. ``Pipeline.export_state_dict``
    reads it.
    """

    def __init__(self, pieces: Sequence[tuple[str, nn.Module]], *,
                 export_names: Mapping[str, Sequence[str]] | None = None):
        super().__init__()
        self.order = [name for name, _ in pieces]
        for name, module in pieces:
            parent = self
            *path, last = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(last, module)
        self._kw = {name: accepts(m) for name, m in pieces}
        self.export_names = None
        if export_names is not None:
            self.export_names = {k: list(export_names[k]) for k in self.state_dict()
                                 if k in export_names}

    def forward(self, *x, **side):
        for name in self.order:
            piece = self.get_submodule(name)
            y = piece(*x, **side_for(self._kw[name], side))
            x = y if isinstance(y, tuple) else (y,)
        return y


def _export_names(model: nn.Module):
    """The model's own {state-dict key: original names}, if it maps them."""
    fn = getattr(model, "export_names", None)
    return fn() if callable(fn) else None


def stage_names(pieces: Sequence[str], *, split_points: Sequence[str] | None = None,
                stages: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """The piece names of each stage, from split points or per-stage lists.

    Raises PartitionError naming an unknown piece, a split point out of order,
    a stage list that skips, repeats or reorders pieces, or an empty stage.
    """
    names = list(pieces)
    index = {n: i for i, n in enumerate(names)}
    show = ", ".join(names[:4] + (["..."] if len(names) > 5 else []) + names[-1:])
    if (split_points is None) == (stages is None):
        raise PartitionError("give exactly one of split_points=[...] (where stages begin) or "
                             "stages=[[...], ...] (each stage's module names)")
    if split_points is not None:
        cuts = []
        for p in split_points:
            if p not in index:
                raise PartitionError(f"split point {p!r} is not a piece of the model; pieces: "
                                     f"{show}")
            cuts.append(index[p])
        if cuts != sorted(set(cuts)) or (cuts and cuts[0] == 0):
            raise PartitionError(f"split points {list(split_points)} must be distinct, in model "
                                 f"order, and not the first piece ({names[0]!r})")
        bounds = [0, *cuts, len(names)]
        return [names[a:b] for a, b in zip(bounds, bounds[1:])]
    out = [list(s) for s in stages]
    flat = [n for s in out for n in s]
    for n in flat:
        if n not in index:
            raise PartitionError(f"stage module {n!r} is not a piece of the model; pieces: {show}")
    if flat != names:
        raise PartitionError(f"the stage lists must cover every piece once, in order "
                             f"({len(flat)} listed, the model has {len(names)}: {show})")
    if any(not s for s in out):
        raise PartitionError("a stage list is empty; every stage needs at least one module")
    return out


def split_by_names(model: nn.Module, *, split_points: Sequence[str] | None = None,
                   stages: Sequence[Sequence[str]] | None = None) -> list[Chain]:
    """All stages of a model built whole (they share its modules, so a weight
    used in two stages is detected as tied)."""
    pieces = dict(chain_pieces(model))
    groups = stage_names(list(pieces), split_points=split_points, stages=stages)
    names = _export_names(model)
    return [Chain([(n, pieces[n]) for n in g], export_names=names) for g in groups]


def init_from_seed(module: nn.Module, names: Sequence[str], seed: int) -> None:
    """Initialise the pieces ``names`` of ``module`` the same way on any rank:
    each piece's ``reset_parameters`` (of every submodule that has one) runs
    under a seed made from ``seed`` and the piece's name, so a piece's weights
    do not depend on which other pieces this process builds."""
    done: dict[int, torch.Tensor] = {}  # a tied weight keeps its first piece's values
    for name in names:
        piece = module.get_submodule(name)
        keep = {id(p): p for p in piece.parameters() if id(p) in done}
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        with torch.no_grad():
            _reset(piece)
            for i, p in keep.items():
                p.copy_(done[i])
        done.update({id(p): p.detach().clone() for p in piece.parameters()})


def _reset(module: nn.Module) -> None:
    """Call the outermost ``reset_parameters`` on each path: a module that
    defines its own initialisation (e.g. GPT-style scaled weights) decides for
    its children too."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if own:  # to_empty left them uninitialised: never train on garbage
        raise PartitionError(
            f"{type(module).__name__} has parameters ({', '.join(own)}) but no "
            f"reset_parameters, so a seed cannot initialise it; build the stage from a "
            f"state dict (state_dict=...) or pass init=fn(stage, names)")
    for child in module.children():
        _reset(child)


@contextmanager
def params_on_meta():
    """While active, every parameter a module registers goes to the meta device
    (shapes only, no memory), and everything else, buffers included, is made
    as the constructor makes it. A build under ``torch.device("meta")`` would
    lose what constructors compute into buffers that no state dict holds
    (rotary tables, embedding scales, masks); this keeps them. A parameter
    that is already on meta (a tie) is left as it is. A constructor that
    fills a parameter before registering it (``Parameter(torch.randn(...))``)
    still computes it once on the CPU; most (``nn.Linear``, ``nn.Embedding``,
    Hugging Face's) register ``torch.empty`` and initialise after, on meta.
    Patches ``nn.Module.register_parameter`` for the block: build in one
    thread."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = type(param)(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _materialise(stage: nn.Module, device) -> set[int]:
    """Give the stage's meta parameters real (uninitialised) storage on
    ``device`` and move its buffers there, their values kept. A tensor shared
    by several modules (a tied weight) stays one tensor. Returns the ids of
    buffers that were on meta (their values are lost)."""
    made: dict[int, torch.Tensor] = {}
    old: list[torch.Tensor] = []  # alive until done, so no id is reused
    lost: set[int] = set()
    for module in stage.modules():
        for table, is_param in ((module._parameters, True), (module._buffers, False)):
            for key, t in table.items():
                if t is None:
                    continue
                if id(t) not in made:
                    old.append(t)
                    new = (torch.empty_like(t, device=device) if t.device.type == "meta"
                           else t.detach().to(device))
                    made[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) \
                        if is_param else new
                    if t.device.type == "meta" and not is_param:
                        lost.add(id(new))
                table[key] = made[id(t)]
    return lost


def build_stage(factory: Callable[[], nn.Module], names: Sequence[str], *,
                seed: int | None = None, state_dict: Mapping | Sequence[Mapping] | None = None,
                init: Callable[[nn.Module, Sequence[str]], None] | None = None,
                device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Chain:
    """Build the stage made of pieces ``names`` without building the model.

    ``factory()`` constructs the whole model with its parameters on the meta
    device (``params_on_meta``), so no parameter memory is allocated, while
    buffers get the values the constructor gives them (every rank holds the
    model's buffers: scales, rotary tables, masks; small beside the weights).
    The stage's parameters are then allocated on ``device`` and filled, in
    this order of preference, from ``state_dict`` (the model's keys; a full
    dict, or a list of shards, of which only this stage's keys are read; it
    also sets persistent buffers), ``init(model, names)``, or ``seed`` (see
    ``init_from_seed``).

    Raises PartitionError when the state dict lacks a key of the stage, or
    when a seed is asked to initialise a module without ``reset_parameters``
    (many Hugging Face modules: load their weights from a state dict).
    """
    with params_on_meta():
        model = factory()
    if dtype is not None:
        model = model.to(dtype)
    pieces = dict(chain_pieces(model))
    stage = Chain([(n, pieces[n]) for n in names], export_names=_export_names(model))
    lost = _materialise(stage, device)
    kept = stage.state_dict(keep_vars=True)
    for name, buf in stage.named_buffers():
        if id(buf) in lost and not (state_dict is not None and name in kept):
            raise PartitionError(
                f"buffer {name!r} of this stage was made on the meta device by the factory, "
                f"so its value is lost and no state dict restores it; build the model in the "
                f"factory without torch.device('meta') (build_stage keeps parameters off "
                f"memory by itself)")
    if state_dict is not None:
        shards = [state_dict] if isinstance(state_dict, Mapping) else list(state_dict)
        want = stage.state_dict()
        got = {}
        for shard in shards:
            got.update({k: v for k, v in shard.items() if k in want})
        missing = sorted(set(want) - set(got))
        if missing:
            raise PartitionError(f"the state dict lacks {len(missing)} key(s) of this stage, "
                                 f"e.g. {missing[:3]}; pass every shard that holds them")
        stage.load_state_dict(got)
    elif init is not None:
        init(stage, names)
    elif seed is not None:
        init_from_seed(stage, names, seed)
    return stage


def param_bytes(modules) -> int:
    """Bytes of real (non-meta) parameter storage in ``modules``, each counted once."""
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen and p.device.type != "meta":
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total
