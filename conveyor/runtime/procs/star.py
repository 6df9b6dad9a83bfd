"""A gather to one rank and its answer back, as point-to-point messages.

Two exchanges open and close every step: the ranks' agreement (``agree``)
and the step's loss and flags (``train.stepend``). Each is a star: every
rank sends a few numbers to one root, and the root sends every rank one
answer. As gloo collectives they cost the step more than their bytes: each
is run by a worker thread of the process group (a hand-off per call), and a
send whose receive is not yet posted waits for a round trip (gloo sends
only into a posted receive). Here each rank posts its receives first
(``post``), before anyone sends, from the calling thread: every message then
goes out the moment it is ready and is waiting when it is needed.

The calls go to the process group object itself, not through
``torch.distributed.isend``/``irecv``, whose checks and logging cost more
than the message (about 50 of 115 us a call on a loaded 2-core machine).

Messages are told apart by tag (``up_tag`` to the root, ``down_tag`` back),
chosen above every tag of the pipeline's own messages, so the order of
posting never matters. That is gloo's rule (and the shared-memory
transport's, whose control messages go over gloo); NCCL pairs messages in
posting order, so callers use collectives there (``usable``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["Star", "usable", "send", "recv"]


def usable(backend: str, world_size: int) -> bool:
    """Whether a star runs over this backend (not NCCL) and group size (> 1)."""
    return world_size > 1 and backend != "nccl"


def send(group, tensor: torch.Tensor, dst: int, tag: int):
    """Post a send of ``tensor`` to rank ``dst`` of ``group`` (None: the
    world); returns its work."""
    return (group if group is not None else dist.group.WORLD).send([tensor], dst, tag)


def recv(group, tensor: torch.Tensor, src: int, tag: int):
    """Post a receive into ``tensor`` from rank ``src`` of ``group``."""
    return (group if group is not None else dist.group.WORLD).recv([tensor], src, tag)


class Star:
    """One exchange over ``group`` (None: the world) of ``size`` ranks;
    ``rank`` is this rank in the group, ``root`` the one that answers.
    Messages are CPU tensors of ``dtype``: ``up_shape`` to the root,
    ``down_shape`` back.

    Call ``post()`` once, then on a non-root ``send(mine)`` and ``answer()``,
    on the root ``collect(mine)`` and ``reply(answer)``. Waits are the
    caller's to bound (``deadline.bounded``). RuntimeError from the process
    group when a peer is gone.
    """

    def __init__(self, *, group, rank: int, size: int, root: int, up_tag: int,
                 down_tag: int, up_shape: tuple, down_shape: tuple, dtype: torch.dtype):
        self.group, self.rank, self.size, self.root = group, rank, size, root
        self.up_tag, self.down_tag = up_tag, down_tag
        self.up_shape, self.down_shape, self.dtype = up_shape, down_shape, dtype
        self.bufs: list[torch.Tensor] = []
        self.recvs: list | None = None
        self.sends: list = []

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    def post(self) -> None:
        """Post this rank's receives (once; returns at once)."""
        if self.recvs is not None:
            return
        if self.is_root:
            self.bufs = [torch.empty(self.up_shape, dtype=self.dtype) for _ in range(self.size)]
            self.recvs = [recv(self.group, self.bufs[q], q, self.up_tag)
                          for q in range(self.size) if q != self.root]
        else:
            self.bufs = [torch.empty(self.down_shape, dtype=self.dtype)]
            self.recvs = [recv(self.group, self.bufs[0], self.root, self.down_tag)]

    def send(self, mine: torch.Tensor) -> None:
        """Non-root: send this rank's numbers to the root (does not wait)."""
        self.post()
        self.sends.append((send(self.group, mine, self.root, self.up_tag), mine))

    def answer(self) -> torch.Tensor:
        """Non-root: wait for the root's answer (and this rank's send)."""
        for w, _ in self.sends:
            w.wait()
        self.recvs[0].wait()
        self.sends, self.recvs = [], None
        return self.bufs[0]

    def collect(self, mine: torch.Tensor) -> list[torch.Tensor]:
        """Root: every rank's numbers, in rank order (``mine`` at the root's place)."""
        self.post()
        for w in self.recvs:
            w.wait()
        self.recvs = None
        self.bufs[self.root] = mine
        return self.bufs

    def reply(self, answer: torch.Tensor) -> None:
        """Root: send ``answer`` to every other rank and wait until it is out
        (at once where their receives are posted)."""
        works = [send(self.group, answer, q, self.down_tag)
                 for q in range(self.size) if q != self.root]
        for w in works:
            w.wait()
