"""The decode loop: one rank's part of a lowered decode schedule.

A decode schedule (``conveyor.schedule.decode``) is data like any other:
per rank, forwards of (virtual stage, lane) with the sends and receives the
lowering added. This loop walks that list, as the interpreter walks a
training step's; what differs is what a forward feeds and keeps:

* each (stage, lane) has a ``StageCache`` (``kvcache``), given to the stage
  as ``cache=`` with the round's ``attention_mask`` and ``position_ids``
  (``lanes.Lane.side``);
* stage 0 reads the prompt chunk (prefill rounds) or the token the last
  stage sent back over the loop cut (token rounds);
* the last stage picks the next token from the last column's logits
  (``sampling``) and sends it back to stage 0.

Every message crosses the same ``Comm`` as training's (shape handshake,
byte counts, peer-failure errors) and every wait goes through its hooks,
so the hang watch bounds it. Each message carries a flag, as one more
slice of its first tensor along dim 0 (not a message of its own): 1 go on,
0 "this lane has finished". When every sequence of a lane
has stopped (a stop token), the last stage sends the flag back; the next
round runs once more down the chain with flag 0, telling every rank, and
then every rank skips that lane's remaining actions: the same prefix of
the schedule on every rank, so no receive is left waiting.

Receives are posted in list order (order-safe where messages pair in
posting order), each once this rank has run the same stage's previous
round of that lane with flag 1: then its message is sure to come.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import torch

from conveyor.errors import ConveyorError
from conveyor.runtime.errors import StageError
from conveyor.runtime.execute.kvcache import StageCache
from conveyor.runtime.execute.lanes import Lane
from conveyor.runtime.execute.precision import Policy
from conveyor.runtime.execute.sampling import Sampling, generators, pick
from conveyor.runtime.execute.stages import accepts, side_for
from conveyor.schedule.ir import F, RECV_F, SEND_F, Action, Schedule

__all__ = ["Decoder"]


class Decoder:
    """Runs rank ``rank``'s actions of the lowered decode ``schedule`` over
    ``lanes`` (every rank's ``Lane`` list); S real stages, ``chunks`` prefill
    rounds. The last stage's rank keeps the tokens (``tokens[lane]``,
    (n, new_tokens), ``stop_pad`` after a stop) and, with ``keep_logits``,
    the logits that chose them."""

    def __init__(self, schedule: Schedule, *, rank: int, stages: dict[int, torch.nn.Module],
                 comm, lanes: list[Lane], S: int, chunks: int, new_tokens: int,
                 sampling: Sampling, stop: set[int], pad_id: int, policy: Policy | None = None,
                 keep_logits: bool = False):
        self.schedule, self.rank, self.stages, self.comm = schedule, rank, stages, comm
        self.lanes, self.S, self.chunks, self.N = lanes, S, chunks, new_tokens
        self.K = chunks + new_tokens - 1
        self.sampling, self.stop, self.pad_id = sampling, stop, pad_id
        self.policy = policy or Policy()
        self.keep_logits = keep_logits
        self.place = schedule.placement
        self.row = schedule.actions[rank]
        self._kw = {s: accepts(m) for s, m in stages.items()}
        # The shapes' keys as small integers (message tags stay small).
        keys = sorted({ln.key(k) for ln in lanes for k in range(self.K)})
        self._key = {k: i for i, k in enumerate(keys)}
        self._handlers = {F: self._forward, SEND_F: self._send, RECV_F: self._recv}
        self._dispatch = tuple(self._handlers[a.kind] for a in self.row)
        self._step_hooks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.recvs = [i for i, a in enumerate(self.row) if a.kind == RECV_F]

    # -- extension points (the hang watch hooks in as into the interpreter's) --------
    def wrap_actions(self, wrapper) -> None:
        """Replace every action's handler ``h`` with ``wrapper(h)``."""
        self._dispatch = tuple(wrapper(h) for h in self._dispatch)

    def on_step(self, start: Callable[[], None], end: Callable[[], None]) -> None:
        """Call ``start()`` as the run begins and ``end()`` as it ends."""
        self._step_hooks.append((start, end))

    # -- the loop ------------------------------------------------------------------
    def run(self, recorder=None) -> None:
        """Run this rank's actions; tokens (and logits) land in ``self.tokens``."""
        self.caches: dict[tuple[int, int], StageCache] = {}
        self.out: dict[tuple[int, int], tuple] = {}      # kept for a local consumer or a send
        self.inbox: dict[tuple[int, int], tuple] = {}    # received, not yet consumed
        self.posted: dict[Action, tuple] = {}
        self.sends: deque = deque()
        self.done_round: dict[int, int] = {}   # lane -> the round its flag 0 went down
        self.ran: set[tuple[int, int]] = set()  # (virtual stage, lane) run with flag 1
        self.tokens = {ln.index: torch.full((ln.n, self.N), self.pad_id, dtype=torch.long)
                       for ln in self.lanes}
        self.logits: dict[int, list] = {ln.index: [] for ln in self.lanes}
        self.finished = {ln.index: torch.zeros(ln.n, dtype=torch.bool) for ln in self.lanes}
        self.produced = {ln.index: torch.zeros(ln.n, dtype=torch.long) for ln in self.lanes}
        self.gens = {ln.index: generators(self.sampling.seed, ln.rows) for ln in self.lanes}
        self.cache_bytes = self.peak_cache_bytes = 0
        self._held: dict[tuple[int, int], int] = {}
        self._next_recv = 0
        for start, _ in self._step_hooks:
            start()
        clock = time.perf_counter
        try:
            for i, handler in enumerate(self._dispatch):
                self.step_index = i
                a = self.row[i]
                self._post_ready()
                if self._skipped(a):
                    continue
                if recorder is None:
                    handler(a)
                else:
                    t0 = clock()
                    handler(a)
                    recorder.add(a, t0, clock())
                self._release_done()
            while self.sends:
                work, _, peer, a = self.sends.popleft()
                self.comm.wait([work], peer=peer, action=a)
        finally:
            for _, end in self._step_hooks:
                end()

    # -- bookkeeping ----------------------------------------------------------------
    def _round(self, vs: int) -> tuple[int, int]:
        return vs % self.S, vs // self.S

    def _skipped(self, a: Action) -> bool:
        """Whether ``a`` falls after its lane finished (see the module docstring)."""
        done = self.done_round.get(a.mb)
        if done is None:
            return False
        s, k = self._round(a.stage)
        if k > done:
            return True
        # The loop's message of the round that carried flag 0: nobody waits for it.
        return a.kind == SEND_F and s == self.S - 1

    def _release_done(self) -> None:
        while self.sends and self.sends[0][0].is_completed():
            self.sends.popleft()

    def _post_ready(self) -> None:
        """Post the receives, in list order, whose messages are sure to come."""
        while self._next_recv < len(self.recvs):
            a = self.row[self.recvs[self._next_recv]]
            if a in self.posted:
                self._next_recv += 1
                continue
            if self._skipped(a):
                self._next_recv += 1
                continue
            if a.stage >= self.S and (a.stage - self.S, a.mb) not in self.ran:
                return  # its lane may finish before then
            key = self._key[self.lanes[a.mb].key(a.stage // self.S)]
            if not self.comm.act_meta_known(a.stage - 1, key):
                return  # learnt at the receive itself
            self.posted[a] = self.comm.post_act(cut=a.stage - 1, mb=a.mb, size=key, action=a)
            self._next_recv += 1

    # -- transfers ------------------------------------------------------------------
    def _send(self, a: Action) -> None:
        vs, lane = a.stage, a.mb
        tensors = self.out.pop((vs, lane))
        key = self._key[self.lanes[lane].key((vs + 1) // self.S)]
        held = self.comm.send_act(list(tensors), cut=vs, mb=lane, size=key, action=a)
        peer = self.place[vs + 1]
        for work, t in held:
            self.sends.append((work, t, peer, a))

    def _recv(self, a: Action) -> None:
        pend = self.posted.pop(a, None)
        if pend is None:
            key = self._key[self.lanes[a.mb].key(a.stage // self.S)]
            if not self.comm.act_meta_known(a.stage - 1, key):
                self.comm.recv_act_meta(cut=a.stage - 1, size=key, action=a)
            pend = self.comm.post_act(cut=a.stage - 1, mb=a.mb, size=key, action=a)
            self._next_recv += 1  # it was the next in list order: every earlier one ran
        self.comm.wait(pend.works, peer=self.place[a.stage - 1], action=a)
        self.inbox[(a.stage, a.mb)] = tuple(b.detach() for b in pend.buffers)

    # -- compute --------------------------------------------------------------------
    def _input(self, vs: int, lane: int) -> tuple:
        """(tensors, flag) that (vs, lane) consumes."""
        if vs == 0:
            return (), 1
        if self.place[vs - 1] == self.rank:
            got = self.out.pop((vs - 1, lane))
        else:
            got = self.inbox.pop((vs, lane))
        return _split_flag(got)

    def _forward(self, a: Action) -> None:
        vs, li = a.stage, a.mb
        s, k = self._round(vs)
        lane = self.lanes[li]
        x, flag = self._input(vs, li)
        if flag == 0:
            self.done_round[li] = k
        if s == 0:  # the prompt's chunk, or the token the last stage sent back
            x = (lane.prompt(k),) if k < self.chunks else (x[0].to(lane.ids.device),)
        cache = self.caches.get((s, li))
        if cache is None:
            cache = self.caches[(s, li)] = StageCache(s, li)
        side = dict(lane.side(k), cache=cache)
        try:
            with torch.no_grad(), self.policy.autocast():
                y = self.stages[s](*x, **side_for(self._kw[s], side))
        except ConveyorError:
            raise
        except Exception as e:
            what = (f"prefill chunk {k + 1} of {self.chunks}" if k < self.chunks else
                    f"the step to token {k - self.chunks + 2} of {self.N}")
            raise StageError(
                f"rank {self.rank} (stage {s}) failed in the forward of lane {li} ({what}) "
                f"while generating: {type(e).__name__}: {e}", rank=self.rank, stage=s, mb=li,
                action=a, original=e) from e
        if flag:
            self.ran.add((vs, li))
        else:  # the lane's last round here: its cache is let go
            del self.caches[(s, li)]
            cache = StageCache(s, li)
        self._count_cache(s, li, cache)
        if s < self.S - 1:
            ys = y if isinstance(y, tuple) else (y,)
            self.out[(vs, li)] = _with_flag(ys, flag)
            return
        out_flag = flag
        if flag and k >= self.chunks - 1:
            out_flag = self._choose(li, k, y)
        if vs + 1 < len(self.place):  # the loop: the token back to stage 0
            tok = self.tokens[li][:, k - self.chunks + 1:k - self.chunks + 2] \
                if k >= self.chunks - 1 else torch.full((lane.n, 1), self.pad_id)
            self.out[(vs, li)] = _with_flag((tok.to(lane.ids.device),), out_flag)

    def _choose(self, li: int, k: int, y) -> int:
        """The last stage: pick lane ``li``'s tokens of round k; the flag to
        send back (0 when every sequence has stopped)."""
        logits = (y[0] if isinstance(y, tuple) else y)[:, -1, :]  # (n, V)
        tok = pick(self.policy.wide_output(logits), self.sampling, self.gens[li]).cpu()
        t = k - self.chunks + 1
        fin = self.finished[li]
        tok = torch.where(fin, torch.full_like(tok, self.pad_id), tok)
        self.tokens[li][:, t] = tok
        self.produced[li] += (~fin).long()
        if self.keep_logits:
            self.logits[li].append(logits.detach().cpu())
        if self.stop:
            fin |= torch.isin(tok, torch.tensor(sorted(self.stop)))
        return 0 if bool(fin.all()) else 1

    def _count_cache(self, s: int, li: int, cache: StageCache) -> None:
        now = cache.nbytes()
        self.cache_bytes += now - self._held.get((s, li), 0)
        self._held[(s, li)] = now
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes)


def _with_flag(ys: tuple, flag: int) -> tuple:
    """The message: ``ys`` with the flag as one more slice of the first
    tensor along dim 0 (no message of its own: half the transfers), or as a
    tensor after them when the first is 0-dim."""
    first = ys[0]
    if first.ndim == 0:
        return (*ys, torch.tensor([flag], dtype=torch.long, device=first.device))
    extra = torch.full((1, *first.shape[1:]), flag, dtype=first.dtype, device=first.device)
    return (torch.cat([first, extra]), *ys[1:])


def _split_flag(got: tuple) -> tuple[tuple, int]:
    """``_with_flag`` undone: (the tensors, the flag). Both sides decide the
    same way: by the first tensor's dimensions."""
    first = got[0]
    if first.ndim == 0:
        return got[:-1], int(got[-1].item())
    return (first[:-1], *got[1:]), int(first[-1].reshape(-1)[0].item())
