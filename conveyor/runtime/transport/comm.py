"""Point-to-point transfers across the cuts, with a shape handshake and byte counts.

Only the tensors at a cut cross it: stage c's outputs go forward to stage c+1
("act"), and their gradients come back ("grad"). Every transfer is an async
isend/irecv into a buffer of the exact size, so the receiver must know shapes
and dtypes before the data arrives. It learns them once, from a metadata
message that the sender sends ahead of the first activation of each
micro-batch size (the handshake), and caches them under (cut, micro-batch
size). Both sides know every micro-batch's size, because every rank knows the
batch size, so both know when a new size (the smaller last micro-batch, a
short last batch) calls for a new handshake; nothing else is sent per
micro-batch. Gradient buffers need no handshake: the receiver of a gradient
is the sender of the activation and knows its shape.

Messages are told apart by tag (cut, micro-batch, direction, tensor index)
on gloo. NCCL ignores tags and matches the messages between two ranks in the
order they were posted, so a schedule is only safe there if each rank posts
its sends to a peer in the order the peer posts the matching receives. The
interpreter posts receives in list order always; ``strict_order=True`` makes
gloo behave like NCCL (every message between two ranks gets tag 0, so gloo
pairs them in posting order), a testing aid that shows on CPU whether a
schedule's lowering is order-safe.

Receive buffers come from a pool keyed by (peer, shape, dtype): a buffer goes
back to it when the interpreter releases it, and is handed out again only
when nothing else (the stage, autograd, a pending send) still refers to its
storage.
"""

from __future__ import annotations

import re
import zlib
from datetime import timedelta
from typing import Callable, NamedTuple, Sequence

import torch
import torch.distributed as dist

from conveyor.runtime.errors import PeerFailedError, StageError, cut_of, describe
from conveyor.runtime.transport.meta import (  # noqa: F401 - META_LEN and the codec are public here
    META_LEN, MAX_TENSORS, TensorMeta, _on_wire, decode_meta, encode_meta, meta_of, nbytes,
)
from conveyor.runtime.transport.pool import BufferPool
from conveyor.runtime.transport.shm import SizeMismatch

__all__ = ["TensorMeta", "Comm", "encode_meta", "decode_meta", "nbytes", "META_LEN"]

# Tag layout: ((mb * cuts + cut) * 3 + direction) * MAX_TENSORS + tensor index;
# handshake messages put the micro-batch size where the micro-batch goes.
_ACT, _GRAD, _META = 0, 1, 2


class Pending(NamedTuple):
    """Posted receives: their work handles and the buffers they fill."""

    works: list
    buffers: tuple[torch.Tensor, ...]


class Comm:
    """One rank's transfers. ``placement[s]`` is the rank of stage s; cut c lies
    between stage c and stage c+1. Ranks are pipeline ranks: ranks in
    ``group`` (the pipeline's process group; None: the whole world).

    Counters (payload bytes, this rank, since the last ``reset_counts``):
    sent_bytes / recv_bytes for activations and gradients, meta_bytes for the
    handshake, messages for the number of tensors sent.
    """

    def __init__(self, *, rank: int, placement: Sequence[int], device: torch.device,
                 timeout_s: float, group=None, strict_order: bool = False, pool: bool = True,
                 transport=None, wire: torch.dtype | None = None, shape_class=None):
        self.rank = rank
        # cut -> the cut whose handshake it shares (None: its own). The decode
        # loop's virtual cuts (conveyor.schedule.decode) repeat the real ones
        # every round: one handshake per real cut, not per round.
        self._class = shape_class or (lambda cut: cut)
        # None: torch.distributed's isend/irecv; else an object with the same
        # calls (conveyor.runtime.transport.shm.ShmTransport)
        self.transport = transport
        # The dtype floating tensors cross the cuts in (the precision policy's
        # boundary dtype); None: as computed.
        self.wire = wire
        self.strict_order = strict_order
        self.pool = BufferPool() if pool else None
        self.placement = tuple(placement)
        self.cuts = max(len(self.placement) - 1, 1)
        self.device = device
        self.timeout = timedelta(seconds=timeout_s)
        self.group = group
        self.meta_out: dict[tuple[int, int], tuple[TensorMeta, ...]] = {}
        self.meta_in: dict[tuple[int, int], tuple[TensorMeta, ...]] = {}
        self._wait_hooks: list[tuple[Callable, Callable]] = []
        self.reset_counts()

    def reset_counts(self) -> None:
        self.sent_bytes = self.recv_bytes = self.meta_bytes = self.messages = 0

    def counts(self) -> dict[str, int]:
        return {"sent_bytes": self.sent_bytes, "recv_bytes": self.recv_bytes,
                "meta_bytes": self.meta_bytes, "messages": self.messages}

    def _tag(self, mb: int, cut: int, direction: int, i: int = 0) -> int:
        if self.strict_order:
            return 0  # one tag per pair: gloo then pairs messages in posting order
        return ((mb * self.cuts + cut) * 3 + direction) * MAX_TENSORS + i

    def _meta_tag(self, size: int, cut: int) -> int:
        # Keyed by size, not micro-batch: the two sides may meet a new size on
        # different micro-batches when their schedules order forwards
        # differently. At most two sizes occur in a step, so the modulus is safe.
        # A key may also be (size, side-input shapes) (variable sequence lengths):
        # hashed, and a clash needs two keys new on one cut in the same step.
        if not isinstance(size, int):
            size = zlib.crc32(repr(size).encode())
        return self._tag(size % 65536, self._class(cut), _META)

    # -- sending -------------------------------------------------------------------
    def _isend(self, t: torch.Tensor, dst: int, tag: int, action):
        try:
            if self.transport is not None:
                return self.transport.isend(t, dst, tag)
            return dist.isend(t, group=self.group, tag=tag, group_dst=dst)
        except RuntimeError as e:
            raise self._lost(dst, action, e) from e

    def send_act(self, tensors: Sequence[torch.Tensor], *, cut: int, mb: int, size: int,
                 action) -> list:
        """Send stage ``cut``'s outputs for micro-batch ``mb`` (of ``size`` samples)
        to stage cut+1, preceded by the handshake the first time this size
        crosses the cut. Returns (work, tensor) pairs to keep until done."""
        dst = self.placement[cut + 1]
        metas = meta_of(tensors, self.wire)
        held = []
        known = self.meta_out.get((self._class(cut), size))
        if known is None:
            meta = encode_meta(metas, stage=cut).to(self.device)
            held.append((self._isend(meta, dst, self._meta_tag(size, cut), action), meta))
            self.meta_bytes += nbytes(meta)
            self.meta_out[(self._class(cut), size)] = metas
        elif known != metas:
            raise StageError(
                f"stage {cut} output changed from {_show(known)} to {_show(metas)} for "
                f"micro-batches of {size} samples; shapes may change only with the micro-batch "
                f"size (the handshake is keyed by it): keep the other dimensions fixed, e.g. "
                f"by padding, pass a side input that carries the length (step(side=...)), or "
                f"set PipelineConfig(varying_shapes=True)", rank=self.rank, stage=cut, mb=mb,
                action=action)
        for i, (t, m) in enumerate(zip(tensors, metas)):
            t = t.detach().to(m.dtype).contiguous()
            held.append((self._isend(t, dst, self._tag(mb, cut, _ACT, i), action), t))
            self.sent_bytes += nbytes(t)
            self.messages += 1
        return held

    def send_grad(self, grads: Sequence[torch.Tensor | None], *, cut: int, mb: int,
                  action) -> list:
        """Send the gradients of stage cut+1's inputs back to stage ``cut``
        (None entries, inputs that need no gradient, are skipped on both sides)."""
        dst = self.placement[cut]
        held = []
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.detach().to(_on_wire(g.dtype, self.wire)).contiguous()
            held.append((self._isend(g, dst, self._tag(mb, cut, _GRAD, i), action), g))
            self.sent_bytes += nbytes(g)
            self.messages += 1
        return held

    # -- receiving -----------------------------------------------------------------
    def act_meta_known(self, cut: int, size: int) -> bool:
        return (self._class(cut), size) in self.meta_in

    def recv_act_meta(self, *, cut: int, size: int, action) -> tuple[TensorMeta, ...]:
        """Blocking: the handshake for micro-batches of this size over ``cut``."""
        buf = torch.empty(META_LEN, dtype=torch.int64, device=self.device)
        src = self.placement[cut]
        try:
            work = self._irecv(buf, src, self._meta_tag(size, cut))
        except RuntimeError as e:
            raise self._lost(src, action, e) from e
        self.wait([work], peer=src, action=action)
        try:
            metas = decode_meta(buf.cpu())
        except ValueError as e:
            raise StageError(
                f"rank {self.rank} cannot read the shape header rank {src} sent{cut_of(action)} "
                f"for {describe(action)}: {e}; both ranks must run the same conveyor and the "
                f"same schedule (on NCCL, or with strict_order, a misordered lowering pairs a "
                f"message with the wrong receive)", rank=self.rank, stage=cut + 1,
                mb=getattr(action, "mb", None), action=action) from e
        self.meta_in[(self._class(cut), size)] = metas
        return metas

    def post_act(self, *, cut: int, mb: int, size: int, action) -> Pending:
        """Post the receives of stage ``cut``'s outputs for micro-batch ``mb``;
        the handshake for this size must be known (see ``act_meta_known``)."""
        metas = self.meta_in[(self._class(cut), size)]
        src = self.placement[cut]
        bufs = tuple(self._buffer(src, m.shape, m.dtype) for m in metas)
        return self._post(bufs, src, [self._tag(mb, cut, _ACT, i) for i in range(len(bufs))],
                          action)

    def post_grad(self, like: Sequence[torch.Tensor | None], *, cut: int, mb: int,
                  action) -> Pending:
        """Post the receives of the gradients of stage ``cut``'s outputs ``like``
        (None where an output needs no gradient)."""
        idx = [i for i, t in enumerate(like) if t is not None]
        src = self.placement[cut + 1]
        bufs = tuple(self._buffer(src, tuple(like[i].shape), _on_wire(like[i].dtype, self.wire))
                     for i in idx)
        pend = self._post(bufs, src,
                          [self._tag(mb, cut, _GRAD, i) for i in idx], action)
        full: list = [None] * len(like)
        for i, b in zip(idx, bufs):
            full[i] = b
        return Pending(pend.works, tuple(full))

    def _buffer(self, src: int, shape, dtype) -> torch.Tensor:
        if self.pool is not None:
            buf = self.pool.take((src, shape, dtype))
            if buf is not None:
                return buf
        return torch.empty(shape, dtype=dtype, device=self.device)

    def release(self, bufs: Sequence[torch.Tensor | None], src: int) -> None:
        """Return receive buffers from ``src`` to the pool once their consumer
        is done with them (the pool checks that nothing else still uses them)."""
        if self.pool is not None:
            for b in bufs:
                if b is not None:
                    self.pool.give((src, tuple(b.shape), b.dtype), b)

    def _irecv(self, buf: torch.Tensor, src: int, tag: int):
        if self.transport is not None:
            return self.transport.irecv(buf, src, tag)
        return dist.irecv(buf, group=self.group, tag=tag, group_src=src)

    def _post(self, bufs, src: int, tags: list[int], action) -> Pending:
        works = []
        for b, tag in zip(bufs, tags):
            try:
                works.append(self._irecv(b, src, tag))
            except RuntimeError as e:
                raise self._lost(src, action, e) from e
            self.recv_bytes += nbytes(b)
        return Pending(works, bufs)

    # -- waiting -------------------------------------------------------------------
    def on_wait(self, begin: Callable[[int, object], None], end: Callable[[], None]) -> None:
        """Call ``begin(peer, action)`` before each blocking wait on a peer and
        ``end()`` after it, also when it fails (e.g. to watch for hangs)."""
        self._wait_hooks.append((begin, end))

    def wait(self, works, *, peer: int, action, watched: bool = True) -> None:
        """Wait for transfers with ``peer``; PeerFailedError when it is gone.
        ``watched=False`` skips the wait hooks, for sends already proven
        delivered (their wait returns at once: nothing to watch)."""
        if not watched:
            for w in works:
                try:
                    w.wait(self.timeout)
                except RuntimeError as e:
                    raise self._lost(peer, action, e) from e
            return
        for begin, _ in self._wait_hooks:
            begin(peer, action)
        try:
            for w in works:
                try:
                    w.wait(self.timeout)
                except RuntimeError as e:
                    raise self._lost(peer, action, e) from e
        finally:
            for _, end in self._wait_hooks:
                end()

    def _lost(self, peer: int, action, e: BaseException) -> PeerFailedError | StageError:
        if isinstance(e, SizeMismatch):  # the shared-memory transport's
            return StageError(
                f"rank {self.rank}{cut_of(action)} in {describe(action)}: {e}; both ranks must "
                f"run the same conveyor and the same schedule (with strict_order, a misordered "
                f"lowering pairs a message with the wrong receive)", rank=self.rank,
                mb=getattr(action, "mb", None), action=action)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # gloo prefixes its source location: "[.../pair.cc:553] Connection closed ..."
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". This is typically")[0]
        what = f" in {describe(action)}{cut_of(action)}" if action is not None else ""
        if "timed out" in first.lower():
            return PeerFailedError(
                f"rank {self.rank} stopped{what}: rank {peer} sent nothing for "
                f"{self.timeout.total_seconds():g} s ({first[:120]}); it is stuck or much "
                f"slower than that: if it is only slow, raise PipelineConfig(timeout_s=...)",
                rank=self.rank, peer=peer, action=action)
        return PeerFailedError(
            f"rank {self.rank} stopped{what}: lost rank {peer} ({first[:160]}); the failing "
            f"rank reports the cause (or, if it died without a word, the launcher)",
            rank=self.rank, peer=peer, action=action)


def _show(metas: Sequence[TensorMeta]) -> str:
    return ", ".join(f"{tuple(m.shape)} {str(m.dtype).replace('torch.', '')}" for m in metas)
