"""The one interpreter: runs this rank's part of a lowered Schedule.

There is no loop per schedule. The rank walks its action list in order and
dispatches each action to a handler by kind; naive, GPipe, 1F1B, and any valid
schedule read from a file run through the same code. Stages that share a rank
(several chunks per rank) hand tensors to each other in memory; stages on
different ranks go through ``Comm``.

What each handler keeps (keys are (stage, micro-batch)):

    inp   stage inputs, kept for the input gradient     F -> B/I
    out   stage outputs (the weighted loss on the last   F -> B/I (-> W)
          stage), kept for the backward
    gout  gradients of ``out``                          RECV_B or local B/I -> B/I
    gin   gradients of ``inp``, waiting to be sent      B/I -> SEND_B
    wpend outputs and their gradients, kept for W       I -> W

Receives are posted before the compute action that precedes them, whenever
their buffer size is already known, so that the transfer overlaps that
compute; on NCCL, which matches messages in order rather than by tag, they are
posted at their place in the list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from conveyor.errors import ConveyorError
from conveyor.runtime.comm import Comm, Pending
from conveyor.runtime.errors import StageError, describe
from conveyor.runtime.recorder import ActivationMemory, Recorder
from conveyor.schedule.ir import B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule
from conveyor.schedule.render import render_grid

__all__ = ["StepData", "Interpreter"]

_SHAPE_WORDS = ("shape", "size", "mat1", "dimension", "expected input", "must match")


@dataclass
class StepData:
    """One step's input to the interpreter.

    sizes:    micro-batch sizes (every rank knows them).
    inputs:   per micro-batch, the tuple of input tensors (first stage only).
    targets:  per micro-batch, the target (last stage only).
    weights:  per micro-batch, the factor on its loss (size/batch for a mean).
    """

    sizes: list[int]
    inputs: list[tuple[torch.Tensor, ...]] | None = None
    targets: list[Any] | None = None
    weights: list[float] = field(default_factory=list)
    side: list[dict[str, Any]] | None = None  # per micro-batch: keyword args of every stage
    keys: list[Any] | None = None  # per micro-batch handshake key (default: its size)

    def key(self, mb: int):
        return self.sizes[mb] if self.keys is None else self.keys[mb]


def _as_tuple(obj, *, what: str, rank: int, stage: int, mb: int, action) -> tuple:
    if isinstance(obj, torch.Tensor):
        return (obj,)
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tuple(obj)
    raise StageError(
        f"rank {rank} (stage {stage}) {what} a {type(obj).__name__} for micro-batch {mb}; a "
        f"stage must return a tensor or a tuple of tensors (they cross the cut to the next "
        f"stage)", rank=rank, stage=stage, mb=mb, action=action)


def _cut(t: torch.Tensor) -> torch.Tensor:
    """A stage boundary inside one rank: a fresh leaf, so each stage has its own
    graph (needed to run a stage's backward, or its I and W, on their own)."""
    leaf = t.detach()
    if t.requires_grad:
        leaf.requires_grad_(True)
    return leaf


class Interpreter:
    """Executes one rank's actions of ``schedule`` (already lowered with comms).

    stages:   {stage index: module} for the stages on this rank.
    loss_fn:  ``loss_fn(output, target) -> scalar`` on the last stage.
    """

    def __init__(self, schedule: Schedule, *, rank: int, stages: dict[int, torch.nn.Module],
                 comm: Comm | None, loss_fn: Callable, prepost: bool = True):
        self.schedule = schedule
        self.rank = rank
        self.row = schedule.actions[rank]
        self.stages = stages
        self.comm = comm
        self.loss_fn = loss_fn
        self.place = schedule.placement
        self.last = schedule.S - 1
        self.forward_only = schedule.forward_only
        self._post_plan = self._plan_posts() if prepost else [[] for _ in self.row]
        self._handlers = {F: self._forward, B: self._backward, I: self._input_grad,
                          W: self._weight_grad, SEND_F: self._send_f, RECV_F: self._recv_f,
                          SEND_B: self._send_b, RECV_B: self._recv_b}

    def _plan_posts(self) -> list[list[int]]:
        """For each position holding a compute action, the positions of the
        receives between it and the next compute action (post them early)."""
        plan: list[list[int]] = [[] for _ in self.row]
        computes = [i for i, a in enumerate(self.row) if a.is_compute]
        for here, nxt in zip(computes, computes[1:]):
            plan[here] = [j for j in range(here + 1, nxt) if self.row[j].kind in (RECV_F, RECV_B)]
        return plan

    # -- the loop ------------------------------------------------------------------
    def run(self, data: StepData, *, recorder: Recorder | None = None,
            memory: ActivationMemory | None = None) -> tuple[torch.Tensor | None, dict]:
        """Run the step. Returns (sum of weighted losses or None if this rank
        has no last stage, {mb: last-stage output} for forward-only steps)."""
        self.data, self.memory = data, memory
        self.inp, self.out, self.gout, self.gin, self.wpend = {}, {}, {}, {}, {}
        self.posted: dict[Action, Pending] = {}
        self.sends: list = []
        self.outputs: dict[int, Any] = {}
        self.loss = None
        clock = time.perf_counter
        try:
            for i, a in enumerate(self.row):
                self.step_index = i
                for j in self._post_plan[i]:
                    self._post(self.row[j])
                if recorder is None:
                    self._handlers[a.kind](a)
                else:
                    t0 = clock()
                    self._handlers[a.kind](a)
                    recorder.add(a, t0, clock())
            # Sends were posted asynchronously; their buffers must outlive them.
            for work, _, peer, a in self.sends:
                self.comm.wait([work], peer=peer, action=a)
        finally:
            # Drop this step's tensors (the batch, unsent buffers) between steps.
            self.sends, self.posted, self.data = [], {}, None
        return self.loss, self.outputs

    # -- helpers -------------------------------------------------------------------
    def _fail(self, a: Action, message: str, original: BaseException | None = None,
              same: bool = False) -> StageError:
        grid = render_grid(self.schedule, [(self.rank, self.step_index)])
        return StageError(message, rank=self.rank, stage=a.stage, mb=a.mb, action=a,
                          original=original, grid=grid, same_on_every_rank=same)

    def _where(self, a: Action) -> str:
        return f"rank {self.rank} (stage {a.stage}) failed in {describe(a)}"

    def _local(self, s: int) -> bool:
        return self.place[s] == self.rank

    # -- compute -------------------------------------------------------------------
    def _forward(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        if s == 0:
            x = self.data.inputs[mb]
        elif self._local(s - 1):
            x = tuple(_cut(t) for t in self.out[(s - 1, mb)])
        else:
            x = self.inp.pop((s, mb))
        stage = self.stages[s]
        if self.data.side:  # side inputs (masks, ids): keyword arguments of every stage
            from functools import partial
            stage = partial(stage, **self.data.side[mb])
        seen: dict[int, int] = {}
        try:
            if self.forward_only:
                with torch.no_grad():
                    y = stage(*x)
            elif self.memory is not None:
                with self.memory.forward((s, mb), seen):
                    y = stage(*x)
                    self.memory.note(x, seen)
            else:
                y = stage(*x)
        except ConveyorError:
            raise
        except Exception as e:
            raise self._forward_error(a, x, e) from e
        if not self.forward_only and any(t.requires_grad for t in x):
            self.inp[(s, mb)] = x
        if s == self.last:
            self._finish(a, y)
        else:
            self.out[(s, mb)] = _as_tuple(y, what="returned", rank=self.rank, stage=s, mb=mb,
                                          action=a)
        if self.memory is not None and not self.forward_only:
            self.memory.note(self.out[(s, mb)], seen)

    def _forward_error(self, a: Action, x, e: Exception) -> StageError:
        s = a.stage
        text = f"{type(e).__name__}: {e}"
        if s > 0 and isinstance(e, RuntimeError) and any(w in str(e) for w in _SHAPE_WORDS):
            first = next(iter(self.stages[s].children()), self.stages[s])
            shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
                               for t in x)
            return self._fail(a, (
                f"rank {self.rank} (stage {s}) cannot use the output of stage {s - 1}: its "
                f"forward of micro-batch {a.mb} failed on input {shapes}: {text}. Fix: stage "
                f"{s - 1} must output what stage {s}'s first layer ({repr(first).splitlines()[0]}) "
                f"takes; check the layer sizes at the cut or move it with balance=[...]"), e)
        return self._fail(a, f"{self._where(a)}: {text}", e)

    def _finish(self, a: Action, y) -> None:
        """Last stage: keep the output (forward-only) or compute the weighted loss."""
        mb = a.mb
        if self.forward_only:
            self.outputs[mb] = y
            return
        try:
            loss = self.loss_fn(y, self.data.targets[mb])
        except Exception as e:
            raise self._fail(a, f"rank {self.rank} (stage {a.stage}) failed computing the "
                                f"loss of micro-batch {mb}: {type(e).__name__}: {e}", e) from e
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                   else f"a {type(loss).__name__}")
            raise self._fail(a, (
                f"rank {self.rank} (stage {a.stage}): loss_fn returned {got} for micro-batch "
                f"{mb}, but the pipeline needs a scalar tensor; reduce it (e.g. "
                f"reduction='mean', or .mean()) so that the step has one loss"))
        weighted = loss.reshape(()) * self.data.weights[mb]
        value = weighted.detach().to(torch.float64)
        self.loss = value if self.loss is None else self.loss + value
        self.out[(a.stage, mb)] = (weighted,)

    def _output_grads(self, s: int, mb: int):
        """The outputs of (s, mb) that need a gradient, and those gradients."""
        ys = self.out[(s, mb)]
        if s == self.last:
            return list(ys), None
        gs = self.gout.pop((s, mb))
        pairs = [(y, g) for y, g in zip(ys, gs) if y.requires_grad and g is not None]
        return [y for y, _ in pairs], [g for _, g in pairs]

    def _run_user(self, a: Action, fn) -> None:
        try:
            fn()
        except ConveyorError:
            raise
        except Exception as e:
            raise self._fail(a, f"{self._where(a)}: {type(e).__name__}: {e}", e) from e

    def _input_grads(self, a: Action, x) -> None:
        """Hand the input gradients of (s, mb) to stage s-1 (in memory, or via SEND_B)."""
        s, mb = a.stage, a.mb
        if s == 0:
            return
        grads = tuple((t.grad if t.grad is not None else torch.zeros_like(t))
                      if t.requires_grad else None for t in x)
        if self._local(s - 1):
            self.gout[(s - 1, mb)] = grads
        else:
            self.gin[(s, mb)] = grads

    def _backward(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        ys, gs = self._output_grads(s, mb)
        self._run_user(a, lambda: torch.autograd.backward(ys, gs) if ys else None)
        del self.out[(s, mb)]
        x = self.inp.pop((s, mb), ())
        self._input_grads(a, x)
        if self.memory is not None:
            self.memory.release((s, mb))

    def _input_grad(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        ys, gs = self._output_grads(s, mb)
        x = self.inp.pop((s, mb), ())
        need = [t for t in x if t.requires_grad]

        def run():
            if ys and need:
                got = torch.autograd.grad(ys, need, gs, retain_graph=True, allow_unused=True)
                for t, g in zip(need, got):
                    t.grad = g

        self._run_user(a, run)
        self.wpend[(s, mb)] = (ys, gs)
        del self.out[(s, mb)]
        self._input_grads(a, x)

    def _weight_grad(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        ys, gs = self.wpend.pop((s, mb))
        params = [p for p in self.stages[s].parameters() if p.requires_grad]
        self._run_user(a, lambda: torch.autograd.backward(ys, gs, inputs=params)
                       if ys and params else None)
        if self.memory is not None:
            self.memory.release((s, mb))

    # -- communication -------------------------------------------------------------
    def _send_f(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        ys = self.out.pop((s, mb)) if self.forward_only else self.out[(s, mb)]
        held = self.comm.send_act(ys, cut=s, mb=mb, size=self.data.key(mb), action=a)
        self._hold_sends(held, self.place[s + 1], a)

    def _send_b(self, a: Action) -> None:
        held = self.comm.send_grad(self.gin.pop((a.stage, a.mb)), cut=a.stage - 1, mb=a.mb,
                                   action=a)
        self._hold_sends(held, self.place[a.stage - 1], a)

    def _hold_sends(self, held, peer: int, a: Action) -> None:
        """Keep a posted send's buffer alive until the transfer is done, and let
        go of sends known to be finished: holding them all to the end of the step
        keeps every micro-batch's activation alive, so 1F1B's memory bound
        (min(P-s, M) micro-batches) grows towards GPipe's M. NCCL reports
        completion as it happens; gloo only once a send is waited on, so on gloo
        the buffers still live until the step's end (see benchmarks/pipeline_notes.md:
        waiting on old sends early must not break the schedule's deadlock freedom)."""
        self.sends = [entry for entry in self.sends if not entry[0].is_completed()]
        self.sends += [(w, t, peer, a) for w, t in held]

    def _post(self, a: Action) -> bool:
        """Post the receive ``a`` if its buffer size is known; True if posted."""
        if a in self.posted:
            return True
        s, mb = a.stage, a.mb
        if a.kind == RECV_F:
            size = self.data.key(mb)
            if not self.comm.act_meta_known(s - 1, size):
                return False
            self.posted[a] = self.comm.post_act(cut=s - 1, mb=mb, size=size, action=a)
        else:
            ys = self.out.get((s, mb))
            if ys is None:
                return False  # its forward has not run yet
            like = [y if y.requires_grad else None for y in ys]
            self.posted[a] = self.comm.post_grad(like, cut=s, mb=mb, action=a)
        return True

    def _recv_f(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        if not self._post(a):
            # The first micro-batch of a new size: learn its shapes here, at
            # the receive's own place, which the schedule proves deadlock-free.
            self.comm.recv_act_meta(cut=s - 1, size=self.data.key(mb), action=a)
            self._post(a)
        works, bufs = self.posted.pop(a)
        self.comm.wait(works, peer=self.place[s - 1], action=a)
        metas = self.comm.meta_in[(s - 1, self.data.key(mb))]
        if not self.forward_only:
            for t, m in zip(bufs, metas):
                if m.requires_grad:
                    t.requires_grad_(True)
        self.inp[(s, mb)] = bufs

    def _recv_b(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        self._post(a)
        works, bufs = self.posted.pop(a)
        self.comm.wait(works, peer=self.place[s + 1], action=a)
        self.gout[(s, mb)] = bufs
