"""The interpreter's transfer handlers: SEND_F, RECV_F, SEND_B, RECV_B.

A mixin of ``Interpreter`` (it uses its ``row``, ``plan``, ``comm``,
``memory`` and step dictionaries). Three rules, all planned once per schedule
in ``conveyor.runtime.execute.rankplan``:

* receives are posted in list order, up to ``plan.post_limit`` ahead, never
  one before an earlier one (safe where messages pair in posting order);
* a send's buffer is held until ``plan.release_after`` proves its receive
  done on the peer, then waited on (at once) and let go, so a step's memory
  does not grow with M; the rest are waited on at the step's end;
* a receive buffer goes back to the comm's pool once its consumer is done
  (B, or W after a split backward; F in inference). Consumers only ever get
  an alias (``detach()``) of a pooled buffer, so the pool can tell from the
  storage's use count whether anything still refers to it.
"""

from __future__ import annotations

from conveyor.runtime.transport.comm import Pending
from conveyor.schedule.ir import RECV_B, RECV_F, Action

__all__ = ["Transfers"]


class Transfers:
    """Transfer handlers and their per-step state (see the module docstring)."""

    def _start_transfers(self) -> None:
        self.posted: dict[Action, Pending] = {}
        self.sends: dict[Action, tuple[list, int]] = {}
        self._bufs: dict[tuple[int, int, str], tuple[tuple, int]] = {}
        self._next_recv = 0  # index into plan.recvs of the first receive not yet posted

    def _end_transfers(self) -> None:
        self.sends, self.posted, self._bufs = {}, {}, {}

    # -- posting receives ------------------------------------------------------------
    def _post_upto(self, limit: int) -> None:
        """Post, in list order, the receives at positions <= ``limit`` that can
        be posted now; stop at the first that cannot (its buffer size is not
        known yet), so that the order is never broken."""
        recvs = self.plan.recvs
        while self._next_recv < len(recvs) and recvs[self._next_recv] <= limit:
            if not self._post(self.row[recvs[self._next_recv]]):
                return
            self._next_recv += 1

    def _post(self, a: Action) -> bool:
        """Post the receive ``a`` if its buffer size is known; True if posted."""
        s, mb = a.stage, a.mb
        if a.kind == RECV_F:
            size = self.data.key(mb)
            if not self.comm.act_meta_known(s - 1, size):
                return False
            pend = self.comm.post_act(cut=s - 1, mb=mb, size=size, action=a)
        else:
            ys = self.out.get((s, mb))
            if ys is None:
                return False  # its forward has not run yet
            like = [y if y.requires_grad else None for y in ys]
            pend = self.comm.post_grad(like, cut=s, mb=mb, action=a)
        self.posted[a] = pend
        if self.memory is not None:
            self.memory.hold(a, pend.buffers)
        return True

    def _take_posted(self, a: Action) -> Pending:
        """The posted receive ``a``, posting it here if it was not yet (it is
        then the next in list order: every earlier receive ran already)."""
        pend = self.posted.pop(a, None)
        if pend is not None:
            return pend
        if not self._post(a):
            # The first micro-batch of a new size: learn its shapes here, at
            # the receive's own place, which the schedule proves deadlock-free.
            self.comm.recv_act_meta(cut=a.stage - 1, size=self.data.key(a.mb), action=a)
            self._post(a)
        self._next_recv += 1
        return self.posted.pop(a)

    # -- the handlers ----------------------------------------------------------------
    def _recv_f(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        works, bufs = self._take_posted(a)
        peer = self.plan.peer[self.step_index]
        self.comm.wait(works, peer=peer, action=a)
        metas = self.comm.meta_in[(s - 1, self.data.key(mb))]
        grad = not self.forward_only
        self.inp[(s, mb)] = tuple(b.detach().requires_grad_(grad and m.requires_grad)
                                  for b, m in zip(bufs, metas))
        self._bufs[(s, mb, RECV_F)] = (bufs, peer)

    def _recv_b(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        works, bufs = self._take_posted(a)
        peer = self.plan.peer[self.step_index]
        self.comm.wait(works, peer=peer, action=a)
        self.gout[(s, mb)] = tuple(None if b is None else b.detach() for b in bufs)
        self._bufs[(s, mb, RECV_B)] = (bufs, peer)

    def _send_f(self, a: Action) -> None:
        s, mb = a.stage, a.mb
        ys = self.out.pop((s, mb)) if self.forward_only else self.out[(s, mb)]
        held = self.comm.send_act(ys, cut=s, mb=mb, size=self.data.key(mb), action=a)
        # The first send of a size is preceded by its handshake (a shape header,
        # counted in meta_bytes, not an activation): count only the data buffers.
        self._hold_send(a, held, held[len(held) - len(ys):])

    def _send_b(self, a: Action) -> None:
        held = self.comm.send_grad(self.gin.pop((a.stage, a.mb)), cut=a.stage - 1, mb=a.mb,
                                   action=a)
        self._hold_send(a, held, held)

    # -- buffers -----------------------------------------------------------------------
    def _hold_send(self, a: Action, held: list, data: list) -> None:
        """Keep a posted send's (work, buffer) pairs until ``_release_sends``;
        ``data``, those of them that carry tensors, count as held memory."""
        self.sends[a] = (held, self.plan.peer[self.step_index])
        if self.memory is not None:
            self.memory.hold(a, [t for _, t in data])

    def _release_sends(self, actions, proven: bool = False) -> None:
        """Wait on these sends (``proven``: the plan proved them delivered, so
        the wait returns at once and the hang watch need not see it; else the
        step is over) and let go of their buffers."""
        for a in actions:
            entry = self.sends.pop(a, None)
            if entry is None:
                continue
            held, peer = entry
            self.comm.wait([w for w, _ in held], peer=peer, action=a, watched=not proven)
            if self.memory is not None:
                self.memory.release(a)

    def _recycle(self, s: int, mb: int) -> None:
        """(s, mb) is done with its received buffers: back to the pool."""
        for kind in (RECV_F, RECV_B):
            entry = self._bufs.pop((s, mb, kind), None)
            if entry is not None:
                self.comm.release(*entry)
