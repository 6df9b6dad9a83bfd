"""The one interpreter: runs this rank's part of a lowered Schedule.

There is no loop per schedule. The rank walks its action list in order and
dispatches each action to a handler by kind; naive, GPipe, 1F1B, and any valid
schedule read from a file run through the same code. Stages that share a rank
(several chunks per rank) hand tensors to each other in memory; stages on
different ranks go through ``Comm`` (the transfer handlers live in
``conveyor.runtime.transport.transfers``).

What each handler keeps (keys are (stage, micro-batch)):

    inp   stage inputs, kept for the input gradient     F -> B/I
    out   stage outputs (the weighted loss on the last   F -> B/I
          stage), kept for the backward
    gout  gradients of ``out``                          RECV_B or local B/I -> B/I
    gin   gradients of ``inp``, waiting to be sent      B/I -> SEND_B
    wpend what W needs (splitgrad.WeightGrad)          I -> W

Everything that can be decided from the schedule alone (which peer each
transfer talks to, how far receives may be posted ahead, when each send's
buffer may be let go) is planned once, at construction (``plan.plan_rank``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from conveyor.errors import ConveyorError
from conveyor.runtime.procs.blame import blame
from conveyor.runtime.transport.comm import Comm
from conveyor.runtime.errors import StageError, describe
from conveyor.runtime.execute.aux import aux_roots, collect_aux
from conveyor.runtime.execute.precision import Policy
from conveyor.runtime.execute.rankplan import plan_rank
from conveyor.runtime.execute.recorder import ActivationMemory, Recorder
from conveyor.runtime.execute.splitgrad import backward_input
from conveyor.runtime.execute.stepdata import StepData
from conveyor.runtime.transport.transfers import Transfers
from conveyor.schedule.ir import B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule
from conveyor.schedule.render import render_grid

__all__ = ["StepData", "Interpreter"]


def _as_tuple(obj, *, what: str, rank: int, stage: int, mb: int, action) -> tuple:
    if isinstance(obj, torch.Tensor):
        return (obj,)
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tuple(obj)
    raise StageError(
        f"rank {rank} (stage {stage}) {what} a {type(obj).__name__} for micro-batch {mb}; a "
        f"stage must return a tensor or a tuple of tensors (they cross the cut to the next "
        f"stage)", rank=rank, stage=stage, mb=mb, action=action)


def _once(fn: Callable[[], None] | None) -> Callable[[], None]:
    """A call of ``fn`` that runs it at most once (None: nothing)."""
    done = [fn is None]

    def call() -> None:
        if not done[0]:
            done[0] = True
            fn()
    return call


def _cut(t: torch.Tensor) -> torch.Tensor:
    """A stage boundary inside one rank: a fresh leaf, so each stage has its own
    graph (needed to run a stage's backward, or its I and W, on their own)."""
    leaf = t.detach()
    if t.requires_grad:
        leaf.requires_grad_(True)
    return leaf


class Interpreter(Transfers):
    """Executes one rank's actions of ``schedule`` (already lowered with comms).

    stages:   {stage index: module} for the stages on this rank.
    loss_fn:  ``loss_fn(output, target) -> scalar`` on the last stage.
    policy:   the precision policy (autocast, widening at cuts, fp32 loss).
    calls:    what runs each stage's forward, e.g. its compiled form
              (``execute.compiled``); None: the modules themselves.

    ``loss_scale`` (set by the training loop before a step) multiplies every
    micro-batch's loss before its backward; the loss reported is unscaled.
    Auxiliary losses a stage adds (``execute.aux``) join that stage's
    backward, weighted and scaled alike; ``aux_values`` holds this step's.
    """

    def __init__(self, schedule: Schedule, *, rank: int, stages: dict[int, torch.nn.Module],
                 comm: Comm | None, loss_fn: Callable, prepost: bool = True,
                 policy: Policy | None = None, calls: dict | None = None):
        self.schedule = schedule
        self.rank = rank
        self.row = schedule.actions[rank]
        self.stages = stages
        self.calls = stages if calls is None else calls
        self.comm = comm
        self.loss_fn = loss_fn
        self.policy = policy or Policy()
        self.loss_scale = 1.0
        self.place = schedule.placement
        self.last = schedule.S - 1
        self.forward_only = schedule.forward_only
        self._params = {s: [p for p in m.parameters() if p.requires_grad]
                        for s, m in stages.items()}
        self.plan = plan_rank(schedule, rank, bool(prepost))
        self._handlers = {F: self._forward, B: self._backward, I: self._input_grad,
                          W: self._weight_grad, SEND_F: self._send_f, RECV_F: self._recv_f,
                          SEND_B: self._send_b, RECV_B: self._recv_b}
        self._dispatch = tuple(self._handlers[a.kind] for a in self.row)
        self._step_hooks: list[tuple[Callable[[], None], Callable[[], None]]] = []

    # -- extension points ----------------------------------------------------------
    def wrap_actions(self, wrapper: Callable[[Callable[[Action], None]], Callable]) -> None:
        """Replace every action's handler ``h`` with ``wrapper(h)`` (e.g. to
        watch progress). Wrappers stack; ``wrapper(h)(a)`` must call ``h(a)``."""
        self._dispatch = tuple(wrapper(h) for h in self._dispatch)

    def after(self, index: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the action at ``index`` of this rank's row has
        run, on every step (e.g. to start a stage's gradient all-reduce when
        its last backward is done). Costs nothing at the other positions."""
        if not 0 <= index < len(self.row):
            raise IndexError(f"action index {index} outside rank {self.rank}'s "
                             f"{len(self.row)} actions")
        inner = self._dispatch[index]

        def run_then(a: Action) -> None:
            inner(a)
            fn()

        self._dispatch = self._dispatch[:index] + (run_then,) + self._dispatch[index + 1:]

    def on_step(self, start: Callable[[], None], end: Callable[[], None]) -> None:
        """Call ``start()`` as each step (``run``) begins and ``end()`` as it
        ends, also when it fails (e.g. to watch for hangs)."""
        self._step_hooks.append((start, end))

    # -- the loop ------------------------------------------------------------------
    def run(self, data: StepData, *, recorder: Recorder | None = None,
            memory: ActivationMemory | None = None, gate: Callable[[], None] | None = None,
            idle: Callable[[], None] | None = None) -> tuple[torch.Tensor | None, dict]:
        """Run the step. Returns (sum of weighted losses or None if this rank
        has no last stage, {mb: last-stage output} for forward-only steps).
        ``gate()``, if given, is called once before this rank's first send or
        receive (``plan.first_transfer``), and before leaving when an action
        failed first: the step's agreement (``procs.agree``), which its
        peers wait in. ``idle()`` is called once after it, at the first
        receive (``plan.first_recv``), where the rank is likely to wait,
        once the receives due there are posted."""
        self.data, self.memory = data, memory
        self.inp, self.out, self.gout, self.gin, self.wpend = {}, {}, {}, {}, {}
        self.aux, self.aux_values = {}, {}  # backward roots per (s, mb); values by name
        self.outputs: dict[int, Any] = {}
        self.loss = None
        for start, _ in self._step_hooks:
            start()
        self._start_transfers()
        clock = time.perf_counter
        limit, release, row = self.plan.post_limit, self.plan.release_after, self.row
        at = self.plan.first_transfer if gate is not None else -1
        at_idle = self.plan.first_recv if idle is not None else -1
        gate = _once(gate)
        try:
            for i, handler in enumerate(self._dispatch):
                if i == at:  # before the first send or receive: the agreement
                    gate()
                self.step_index = i
                self._post_upto(limit[i])
                if i == at_idle:  # after the pipeline's receives: they come first
                    idle()
                if recorder is None:
                    handler(row[i])
                else:
                    t0 = clock()
                    handler(row[i])
                    recorder.add(row[i], t0, clock())
                if release[i]:
                    self._release_sends(release[i], proven=True)
            gate()  # a rank without transfers
            # Sends without an earlier proof of delivery: wait for them now.
            self._release_sends(list(self.sends))
        except Exception:
            # The peers wait in the agreement: complete it. Where the ranks
            # disagree, its error (raised from here) is the cause of this one.
            gate()
            raise
        finally:
            # Drop this step's tensors (the batch, unsent buffers) between steps.
            self._end_transfers()
            self.data = None
            for _, end in self._step_hooks:
                end()
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
        args = self._widened(s, mb, x)
        stage = self.calls[s]
        if self.data.side:  # side inputs (masks, ids): keyword arguments of every stage
            from functools import partial
            stage = partial(stage, **self.data.side[mb])
        seen: dict[int, int] = {}
        terms: list = []
        try:
            if self.forward_only:
                with torch.no_grad(), self.policy.autocast():
                    y = stage(*args)
            elif self.memory is not None:
                with self.memory.forward((s, mb), seen), self.policy.autocast(), \
                        collect_aux() as terms:
                    y = stage(*args)
                    self.memory.note(x, seen)
                self.memory.release(Action(s, RECV_F, mb))  # the buffer is now the input
            else:
                with self.policy.autocast(), collect_aux() as terms:
                    y = stage(*args)
        except ConveyorError:
            raise
        except Exception as e:
            raise self._forward_error(a, x, e) from e
        if not self.forward_only and any(t.requires_grad for t in x):
            self.inp[(s, mb)] = x
        if terms:  # auxiliary losses: roots of this (s, mb)'s backward
            self.aux[(s, mb)] = aux_roots(terms, self.data.aux_weight(mb), self.loss_scale,
                                          self.aux_values)
        if s == self.last:
            self._finish(a, y)
        else:
            self.out[(s, mb)] = _as_tuple(y, what="returned", rank=self.rank, stage=s, mb=mb,
                                          action=a)
        if self.memory is not None and not self.forward_only:
            self.memory.hold((s, mb), self.out[(s, mb)])
        if self.forward_only:
            self._recycle(s, mb)

    def _widened(self, s: int, mb: int, x: tuple) -> tuple:
        """A received stage input as the sender computed it: tensors that
        crossed the cut in a narrower dtype (the policy's boundary) are
        widened back, so the stage computes as in the unsplit model."""
        if s == 0 or self._local(s - 1) or self.comm is None:
            return x
        metas = self.comm.meta_in[(s - 1, self.data.key(mb))]
        if all(m.orig is None for m in metas):
            return x
        return tuple(t if m.orig is None else t.to(m.orig) for t, m in zip(x, metas))

    def _forward_error(self, a: Action, x, e: Exception) -> StageError:
        s = a.stage
        text = f"{type(e).__name__}: {e}"
        where, misfit = blame(self.stages[s], s, x, e)
        if misfit is not None:
            return self._fail(a, (
                f"rank {self.rank} (stage {s}) cannot use the output of stage {s - 1}: its "
                f"forward of micro-batch {a.mb} failed in its first {where}: {misfit} "
                f"({text}). Fix: stage {s - 1} must output what that layer takes; check the "
                f"layer sizes at the cut or move it with balance=[...]"), e)
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in x)
        return self._fail(a, f"{self._where(a)}: {text} (raised in {where} of stage {s}; "
                             f"stage input {shapes})", e)

    def _finish(self, a: Action, y) -> None:
        """Last stage: keep the output (forward-only) or compute the weighted loss."""
        mb = a.mb
        if self.forward_only:
            self.outputs[mb] = y
            return
        try:
            loss = self.loss_fn(self.policy.wide_output(y), self.data.targets[mb])
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
        if self.loss_scale != 1.0:  # fp16: scaled up so small gradients stay representable
            weighted = weighted * self.loss_scale
        self.out[(a.stage, mb)] = (weighted,)

    def _output_grads(self, s: int, mb: int):
        """The outputs of (s, mb) that need a gradient, and those gradients;
        the stage's auxiliary losses join them as scalar roots (gradient None)."""
        ys, aux = self.out[(s, mb)], self.aux.pop((s, mb), [])
        if s == self.last:
            return list(ys) + aux, None
        gs = self.gout.pop((s, mb))
        # A gradient that crossed the cut in the boundary dtype is widened to
        # its output's dtype (autograd needs them to match).
        pairs = [(y, g if g.dtype == y.dtype else g.to(y.dtype))
                 for y, g in zip(ys, gs) if y.requires_grad and g is not None]
        return [y for y, _ in pairs] + aux, [g for _, g in pairs] + [None] * len(aux)

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
        self._recycle(s, mb)
        if self.memory is not None:
            self.memory.release((s, mb))
            self.memory.release(Action(s, RECV_B, mb))

    def _input_grad(self, a: Action) -> None:
        """I: the input gradients only; what W needs is kept (see splitgrad)."""
        s, mb = a.stage, a.mb
        ys, gs = self._output_grads(s, mb)
        x = self.inp.pop((s, mb), ())
        need = [t for t in x if t.requires_grad]

        def run():
            if not ys:
                return
            got, pending = backward_input(ys, gs, need, self._params[s])
            self.wpend[(s, mb)] = pending
            for t, g in zip(need, got):
                t.grad = g
            if self.memory is not None:
                self.memory.hold(("W", s, mb), pending.tensors())

        self._run_user(a, run)
        del self.out[(s, mb)]
        self._input_grads(a, x)
        if self.memory is not None:
            self.memory.release(Action(s, RECV_B, mb))

    def _weight_grad(self, a: Action) -> None:
        """W: the weight gradients from what I kept, without walking the chain again."""
        s, mb = a.stage, a.mb
        pending = self.wpend.pop((s, mb), None)
        if pending is not None:
            self._run_user(a, pending.run)
        self._recycle(s, mb)
        if self.memory is not None:
            self.memory.release((s, mb))
            self.memory.release(("W", s, mb))

