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

    P (ranks)                    <= MAX_P = 1024
    M (micro-batches)            <= MAX_M = 65536
    S (stages: P x v chunks)     <= MAX_S = 4096
    any file conveyor reads      <= MAX_FILE_BYTES = 256 MiB, regular files
                                    only (conveyor.userfiles)
    P x M (compute cells)        <= MAX_CELLS = 2**19 = 524288 (1 to 3 million
                                    compute actions, 2 per cell for 1F1B, 6 for
                                    a V with a split backward; lowering adds up
                                    to 4 transfers per cell)
    S x M (stage cells)          <= MAX_STAGE_CELLS = 2**20: every stage holds
                                    2 or 3 actions per micro-batch, so this
                                    bounds the actions whatever v is (a V's
                                    S = 2P meets it at the P x M bound;
                                    ``-v 100000`` is refused at once)

No torch: the core uses it.
"""

from __future__ import annotations

__all__ = ["MAX_P", "MAX_M", "MAX_S", "MAX_CELLS", "MAX_STAGE_CELLS", "MAX_FILE_BYTES",
           "check_size"]

MAX_P = 1024
MAX_M = 65536
MAX_S = 4096
MAX_CELLS = 2 ** 19
MAX_STAGE_CELLS = 2 ** 20
# Schedule and timeline files are read whole; at the cell bound they stay
# under a few tens of MiB.
MAX_FILE_BYTES = 256 * 2 ** 20


def check_size(P: int, M: int, *, S: int | None = None, what: str = "schedule",
               error=None) -> None:
    """Raise ``error`` (default ScheduleError) when P, M, S (stages, when
    given), P x M or S x M is beyond its bound; each must already be a
    positive integer. Cheap: call it before allocating by them."""
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
    if S is None:
        return
    v = f" (v={S // P} chunks per rank)" if S % P == 0 and S > P else ""
    if S > MAX_S:
        raise error(f"a {what} of S={S} stages{v} is beyond the bound of {MAX_S} stages; "
                    f"use fewer chunks per rank (-v) or ranks")
    if S * M > MAX_STAGE_CELLS:
        raise error(f"a {what} of S={S} stages{v} x M={M} has {S * M} (stage, micro-batch) "
                    f"cells, beyond the bound of {MAX_STAGE_CELLS} (about "
                    f"{3 * S * M / 1e6:.1f} million actions); use fewer chunks per rank (-v), "
                    f"ranks or micro-batches")
