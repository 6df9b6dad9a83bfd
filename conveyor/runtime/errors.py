"""Errors of the runtime, and the one report a failing rank prints.

A rank can fail in three ways, and the distinction decides who prints what:

* ``StageError``: the user's code (a stage's layers or the loss) raised, or
  bad input was found, on this rank. This is the cause; it is reported once.
* ``PeerFailedError``: this rank lost a peer (a connection closed, a receive
  timed out). It is a consequence of another rank's failure, so it is reported
  as one short line and never repeats the cause.
* ``RankFailedError``: raised by the local launcher in the parent process; it
  carries the failing rank's report.

Every report names the rank, stage, micro-batch and action, the original error,
the frames of user code that raised it, and the fix where one is known.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import asdict, dataclass

from conveyor.errors import PipelineError

__all__ = ["describe", "cut_of", "StageError", "AgreementError", "NonFiniteError",
           "PeerFailedError", "RankFailedError", "FailureReport", "report_of", "death_summary"]

_NAMES = {"F": "forward", "B": "backward", "I": "input-gradient backward",
          "W": "weight-gradient backward", "SEND_F": "send of the output",
          "RECV_F": "receive of the input", "SEND_B": "send of the input gradient",
          "RECV_B": "receive of the output gradient"}


def cut_of(action) -> str:
    """The cut a transfer action crosses: ``" on cut 1 (stage 1 -> stage 2)"``
    for 2RECV_F0 or 1SEND_F0, etc.; "" for compute actions (and None)."""
    kind = getattr(action, "kind", None)
    if kind in ("RECV_F", "SEND_B"):
        c = action.stage - 1
    elif kind in ("SEND_F", "RECV_B"):
        c = action.stage
    else:
        return ""
    return f" on cut {c} (stage {c} -> stage {c + 1})"


def describe(action) -> str:
    """``2F3`` -> ``2F3 (forward of micro-batch 3)``."""
    if action is None:
        return "setup"
    return f"{action} ({_NAMES.get(action.kind, action.kind)} of micro-batch {action.mb})"


class StageError(PipelineError):
    """Bad input or a failure in user code on one rank: the cause of a failed step.

    An error that every rank meets in the same way (bad arguments, a batch
    smaller than M) carries ``same_on_every_rank = True`` so it is printed by
    one rank only.

    rank, stage, mb, action: where it happened (None where it does not apply).
    original: the exception raised by user code, if any (also ``__cause__``).
    grid: the rank's schedule with the failing action marked, or "".
    """

    def __init__(self, message: str, *, rank: int | None = None, stage: int | None = None,
                 mb: int | None = None, action=None, original: BaseException | None = None,
                 grid: str = "", same_on_every_rank: bool = False):
        self.message = message
        self.rank, self.stage, self.mb, self.action = rank, stage, mb, action
        self.original = original
        self.grid = grid
        self.same_on_every_rank = same_on_every_rank
        super().__init__(message)


class AgreementError(StageError):
    """The ranks disagree on something every rank must hold alike (the
    schedule, M, the batch size, the model, how many steps they run).

    Every rank sees the same disagreement and raises it at once, so it is
    reported by one rank. field: what differs ("M", "batch", "model", ...);
    values: rank -> that rank's value.
    """

    def __init__(self, message: str, *, field: str, values: dict):
        self.field, self.values = field, dict(values)
        super().__init__(message, same_on_every_rank=True)


class NonFiniteError(StageError):
    """A loss or gradient was NaN or Inf on some rank, and the policy is to
    stop (``PipelineConfig(nonfinite="raise")``). Every rank raises the same
    report, naming each rank that saw it, its stages and the first
    non-finite parameter. found: rank -> what that rank saw."""

    def __init__(self, message: str, *, found: dict):
        self.found = dict(found)
        super().__init__(message, same_on_every_rank=True)


class PeerFailedError(PipelineError):
    """This rank stopped because a peer rank failed or stopped answering."""

    def __init__(self, message: str, *, rank: int | None = None, peer: int | None = None,
                 action=None):
        self.rank, self.peer, self.action = rank, peer, action
        super().__init__(message)


@dataclass
class FailureReport:
    """What a failing rank tells the launcher (a plain dict on the wire).

    kind:    "cause" (this rank's own failure), "same" (an error every rank
             meets identically, e.g. a bad argument: reported by the lowest
             rank only) or "peer" (it lost a peer).
    summary: one line: where and what, e.g. "rank 2 (stage 2) failed in 2F3 ...".
    detail:  user frames, the schedule grid, the fix; may be "".
    """

    rank: int
    kind: str
    summary: str
    detail: str = ""
    stage: int | None = None
    mb: int | None = None
    action: str | None = None
    error_type: str = ""

    def text(self) -> str:
        return self.summary + ("\n" + self.detail if self.detail else "")

    def to_dict(self) -> dict:
        return asdict(self)


class RankFailedError(PipelineError):
    """A launched rank failed; ``report`` is its FailureReport (``reports`` all of them)."""

    def __init__(self, report: FailureReport, reports: list[FailureReport] | None = None):
        self.report = report
        self.reports = reports or [report]
        self.rank, self.stage, self.mb = report.rank, report.stage, report.mb
        super().__init__(report.text())


# Frames that are the machinery between the user's code and the failure:
# conveyor's runtime, torch's module call and autograd's engine (a backward
# that raises is reached through it).
_NOT_USER = ("/conveyor/runtime/", "/torch/nn/modules/module.py", "/torch/autograd/")


def death_summary(rank: int, code: int | None, hang_code: int, where: str = "") -> str:
    """What a launcher can say of a rank that ended without a report: its
    exit code, or the signal that ended it (a negative code), and ``where``
    it was (" while busy in 2F2 (...)", see conveyor.runtime.procs.lastwords)."""
    if code == hang_code:
        return (f"rank {rank} stopped on a hang (exit code {hang_code}); the table above "
                f"shows where every rank was")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return (f"rank {rank} was killed by signal {-code} ({name}){where} without "
                f"reporting an error: something outside Python ended it (kill -9, the out-of-memory "
                f"killer, a job scheduler, or an abort in C code, whose message is above); "
                f"the other ranks were stopped")
    return (f"rank {rank} died (exit code {code}){where} without reporting an error; look for a "
            f"crash (segmentation fault, out of memory, os._exit) in its output")


def _user_frames(exc: BaseException) -> str:
    """The traceback frames of ``exc`` minus torch's and conveyor's own wrappers,
    without the final "Type: message" line (the summary already says it, and the
    original error must be printed once)."""
    frames = traceback.extract_tb(exc.__traceback__)
    keep = [f for f in frames if not any(part in f.filename.replace("\\", "/")
                                         for part in _NOT_USER)]
    if not keep:
        return ""
    return "".join(traceback.format_list(keep)).rstrip()


def report_of(exc: BaseException, *, rank: int) -> FailureReport:
    """Turn any exception raised on ``rank`` into the report printed once."""
    if isinstance(exc, PeerFailedError):
        return FailureReport(rank=rank, kind="peer", summary=str(exc),
                             action=str(exc.action) if exc.action else None,
                             error_type=type(exc).__name__)
    kind = "same" if getattr(exc, "same_on_every_rank", False) else "cause"
    if isinstance(exc, StageError):
        parts = []
        if exc.original is not None:
            frames = _user_frames(exc.original)
            if frames:
                parts.append("  where (innermost last):\n" + _indent(frames, 2))
        if exc.grid:
            parts.append(f"  rank {exc.rank}'s schedule, failing action marked:\n"
                         + _indent(exc.grid, 4))
        return FailureReport(rank=rank, kind=kind, summary=exc.message,
                             detail="\n".join(parts), stage=exc.stage, mb=exc.mb,
                             action=str(exc.action) if exc.action else None,
                             error_type=type(exc.original or exc).__name__)
    frames = _user_frames(exc)
    detail = "  where (innermost last):\n" + _indent(frames, 2) if frames else ""
    return FailureReport(rank=rank, kind=kind,
                         summary=f"rank {rank} failed: {type(exc).__name__}: {exc}",
                         detail=detail, error_type=type(exc).__name__)


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in text.splitlines())
