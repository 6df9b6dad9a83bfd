"""Receive buffers kept for reuse, handed out again only when nothing else
refers to them (see ``comm``)."""

from __future__ import annotations

import torch

__all__ = ["BufferPool"]

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _unshared(t: torch.Tensor) -> bool:
    """True when ``t`` is the only tensor on its storage (no view, alias or
    saved copy in an autograd graph refers to it). Without torch's use count,
    never: then buffers are not reused."""
    if _use_count is None:
        return False
    # One reference is ``t``'s own, one the storage object made for the call.
    return _use_count(t.untyped_storage()._cdata) <= 2


class BufferPool:
    """Free receive buffers by (peer, shape, dtype). ``give`` files a buffer
    its user has let go; ``take`` hands out one that nothing else refers to
    any more (a buffer still in use is dropped from the pool, not reused)."""

    def __init__(self) -> None:
        self.free: dict[tuple, list[torch.Tensor]] = {}

    def give(self, key: tuple, buf: torch.Tensor) -> None:
        self.free.setdefault(key, []).append(buf)

    def take(self, key: tuple) -> torch.Tensor | None:
        bufs = self.free.get(key)
        while bufs:
            buf = bufs.pop()
            if _unshared(buf):
                return buf
        return None
