"""Keep freed memory in the process (``LaunchOptions(keep_heap=True)``, the default).

A training step allocates and frees the same activations every step. glibc
returns freed memory at the top of its heap to the system once more than a
threshold is free, and it serves large blocks with fresh ``mmap`` calls; the
next step then takes a page fault, and a page of zeroes, for every 4 KiB it
touches again. On the real-compute planner benchmark (2 CPU ranks) that was
1,360-4,322 page faults per step, and a looped schedule's steps ran 63-70 ms
against 58-61 ms with the memory kept (benchmarks/planner.md).

``keep_freed_memory`` sets glibc's mmap threshold to its maximum (32 MiB:
smaller blocks come from the heap and are reused) and the trim threshold to
1 GiB (free memory stays in the process). The process then holds on to its
peak heap use, as a GPU caching allocator holds device memory. Where the C
library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20   # glibc's largest
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make this process's C heap keep and reuse freed memory; True where it
    could (glibc), False elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
