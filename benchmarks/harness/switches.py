"""conveyor with one source of per-step overhead switched off, for the breakdown.

A framework name ``conveyor-no-<source>`` (``variant_sources``) runs
conveyor's Pipeline with that source off; it takes its turn with conveyor
and torch like any framework, so each source's share is the paired
difference of its step to conveyor's, round by round. These switches are the
benchmark's own and private: they reach into the pipeline's parts after it
is built (or, for module-level calls, patch them for the length of one
step), so the library carries none of them. Each is safe here because every
rank runs the same script, so what it drops (a check that the ranks agree,
the loss on every rank, a guard) is not needed to get through the step:

    agree      the step agreement (runtime/procs/agree.py) is not run
    loss       no exchange after the backward: each rank keeps its own
               loss and non-finite flags (runtime/train/stepend.py)
    sendwait   no send is waited on before the step's end (the planned
               release points of runtime/schedule/rankplan.py are emptied,
               so memory then grows with M; timing only)
    hooks      the hang watch's per-action and per-wait bookkeeping, its
               last words and the collectives' deadline wrapper are off
               (hang.py, lastwords.py, deadline.py); its thread still polls
    nonfinite  PipelineConfig(nonfinite="off"): no pass over the gradients
    all        every one of the above

Every switch works on the code before issue 32 too (its one blocking
agreement check, its loss all-reduce in run.share), so the same benchmark
gives the breakdown before and after.
"""

from __future__ import annotations

import contextlib
import dataclasses

SOURCES = ("agree", "loss", "sendwait", "hooks", "nonfinite")
PREFIX = "conveyor-no-"

__all__ = ["SOURCES", "PREFIX", "variant_sources", "config_for", "switch_off", "during_step"]


def variant_sources(framework: str) -> frozenset[str] | None:
    """The sources ``framework`` switches off (empty for plain conveyor), or
    None when it is not a conveyor framework."""
    if framework == "conveyor":
        return frozenset()
    if not framework.startswith(PREFIX):
        return None
    name = framework[len(PREFIX):]
    if name == "all":
        return frozenset(SOURCES)
    if name not in SOURCES:
        return None
    return frozenset({name})


def config_for(config, off: frozenset[str]):
    """The PipelineConfig to build with (only the non-finite guard is a config)."""
    return dataclasses.replace(config, nonfinite="off") if "nonfinite" in off else config


def switch_off(pipe, off: frozenset[str]) -> None:
    """Switch off, on this built pipeline, what lives on its own objects."""
    if "agree" in off:
        if hasattr(pipe._agreement, "begin"):
            pipe._agreement.begin = lambda **kw: None
        else:  # the code before issue 32: one blocking check
            pipe._agreement.check = lambda **kw: None
    if "sendwait" in off:
        interp = pipe.interp
        interp.plan = dataclasses.replace(
            interp.plan, release_after=tuple(() for _ in interp.plan.release_after))
    if "hooks" in off:
        for interp in (pipe.interp, pipe._eval_interp):
            interp._step_hooks = []
            interp._dispatch = tuple(interp._handlers[a.kind] for a in interp.row)
        for comm in (pipe.comm, pipe._eval_comm):
            comm._wait_hooks = []


def _local_share(self, loss, flags=()):
    return (float(loss) if loss is not None else 0.0), [float(f) for f in flags]


def _local_share_before(ctx, loss, flags=()):
    return (float(loss) if loss is not None else 0.0), [float(f) for f in flags]


@contextlib.contextmanager
def during_step(off: frozenset[str]):
    """Patch the module-level calls a source makes, for one step."""
    patches = []
    if "loss" in off:
        try:
            from conveyor.runtime.train.stepend import StepEnd
        except ImportError:  # the code before issue 32: one all-reduce, run.share
            from conveyor.runtime.train import run

            patches.append((run, "share", _local_share_before))
        else:
            patches.append((StepEnd, "share", _local_share))
            patches.append((StepEnd, "post", lambda self: None))
    if "hooks" in off:
        from conveyor.runtime.procs import hang

        patches.append((hang, "current", lambda: None))  # deadline.bounded does nothing
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
