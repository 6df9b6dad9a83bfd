"""The sizes conveyor accepts, and the check every entry makes before it allocates.

A schedule holds a few actions per (stage, micro-batch), and every view and the
simulator walk all of them, so the work and the memory grow with P x M. These
bounds let the largest pipelines the issues ask for through (P = 128,
M = 4096) and keep any one input to seconds of CPU (measured at the cell
bound, P = 128, M = 4096, on the shared 2-core machine at load average ~7:
`conveyor simulate -s zbv`, 3.1 million actions, 9.6 s of CPU, 37 s wall,
1.1 GiB resident; `-s 1f1b` 3.4 s of CPU, 0.4 GiB); anything larger is
refused at once with the estimate and the bound, never after minutes of
growth.

    P (ranks / stages)           <= MAX_P = 1024
    M (micro-batches)            <= MAX_M = 65536
    schedule / timeline file     <= MAX_FILE_BYTES = 256 MiB
    P x M (compute cells)        <= MAX_CELLS = 2**19 = 524288 (1 to 3 million
                                    compute actions, 2 per cell for 1F1B, 6 for
                                    a V with a split backward; lowering adds up
                                    to 4 transfers per cell)

No torch: the core uses it.
"""

from __future__ import annotations

__all__ = ["MAX_P", "MAX_M", "MAX_CELLS", "MAX_FILE_BYTES", "check_size", "check_file"]

MAX_P = 1024
MAX_M = 65536
MAX_CELLS = 2 ** 19
# Schedule and timeline files are read whole; at the cell bound they stay
# under a few tens of MiB.
MAX_FILE_BYTES = 256 * 2 ** 20


def check_size(P: int, M: int, *, what: str = "schedule", error=None) -> None:
    """Raise ``error`` (default ScheduleError) when P, M or P x M is beyond
    its bound; P and M must already be positive integers."""
    if error is None:
        from conveyor.errors import ScheduleError as error
    if P > MAX_P:
        raise error(f"P={P} is beyond conveyor's bound of {MAX_P} ranks; use P <= {MAX_P}")
    if M > MAX_M:
        raise error(f"M={M} is beyond conveyor's bound of {MAX_M} micro-batches; use "
                    f"M <= {MAX_M}")
    if P * M > MAX_CELLS:
        raise error(f"a {what} of P={P} x M={M} has {P * M} (stage, micro-batch) cells, "
                    f"beyond the bound of {MAX_CELLS} (about {4 * P * M / 1e6:.1f} million "
                    f"actions); use fewer ranks or micro-batches")


def check_file(path, *, what: str, error=None) -> None:
    """Raise ``error`` when the file at ``path`` is larger than MAX_FILE_BYTES
    (a missing file is left to the reader, which names it)."""
    import os

    if error is None:
        from conveyor.errors import ScheduleError as error
    try:
        size = os.stat(path).st_size
    except OSError:
        return
    if size > MAX_FILE_BYTES:
        raise error(f"{what} {str(path)!r} is {size / 2 ** 20:.0f} MiB, beyond the bound of "
                    f"{MAX_FILE_BYTES // 2 ** 20} MiB; conveyor reads such files whole")
