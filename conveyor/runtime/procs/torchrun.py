"""``launch`` under torchrun: this process is one rank that torchrun started;
run the user's function in it, gather every rank's result on every rank (so
``launch`` returns the same list as under the local launcher), and end the
rank at once with its report when anything fails (see ``launcher``)."""

from __future__ import annotations

import gc
import os
import sys

from conveyor.runtime.errors import FailureReport, report_of
from conveyor.runtime.procs.affinity import pin_rank
from conveyor.runtime.procs.heap import keep_freed_memory
from conveyor.runtime.procs.lifetime import die_with_parent

__all__ = ["run_under_torchrun", "leave_together", "to_cpu", "die"]


def run_under_torchrun(fn, args, kwargs, options):
    """``launch`` in a process torchrun started (see ``launch`` for what it returns)."""
    import torch
    import torch.distributed as dist

    from conveyor.runtime.procs.deadline import bounded
    from conveyor.runtime.procs.elastic import join_attempt_group
    from conveyor.runtime.transport.group import init_rank

    rank = int(os.environ["RANK"])
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # Started by torchrun's agent: it stops the ranks on SIGTERM/SIGHUP
        # itself, but a SIGKILLed agent would leave them running.
        die_with_parent(os.getppid())
    if options.keep_heap:
        keep_freed_memory()
    if options.pin:
        pin_rank(int(os.environ.get("LOCAL_RANK", rank)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))))
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        join_attempt_group(options.backend, options.timeout_s)  # keys apart per restart
        ctx = init_rank(backend=options.backend, timeout_s=options.timeout_s,
                        launcher="torchrun")
        value = to_cpu(fn(ctx, *args, **kwargs))
        leave_together(ctx)
        # Every rank gets the list, as the local launcher's caller does: a
        # script that indexes launch's result runs unchanged on every rank.
        gathered = [None] * dist.get_world_size()
        with bounded("the results gather and exit barrier", None):
            dist.all_gather_object(gathered, value)
            # Tear the group down only once everyone is done with it: a rank
            # that exits with the group alive, or while a peer still talks to
            # it, can abort in gloo's destructor.
            dist.barrier()
    except BaseException as e:  # noqa: BLE001 - every failure must end this rank
        die(report_of(e, rank=rank))
    dist.destroy_process_group()
    # The pipelines ``fn`` built are garbage now, but in reference cycles; they
    # hold their sub-groups' ProcessGroupGloo objects, whose worker threads
    # keep finished works with tensors. Collected only at interpreter exit, a
    # worker thread would then drop a tensor without the GIL to be had and
    # abort the rank ("terminate called without an active exception", seen in
    # 2 of about 10 full test runs). Collect them here, while Python is alive.
    gc.collect()
    return gathered


def leave_together(ctx) -> None:
    """Wait at the end of a rank's function until every rank has finished its
    own, so that no rank exits while a peer still receives from it. A peer that
    is still inside a step, or that failed meanwhile, shows up here at once
    (see ``conveyor.runtime.procs.agree``)."""
    from conveyor.runtime.procs.agree import finish

    finish(ctx)


def to_cpu(value):
    """``value`` with every tensor in it (through lists, tuples and dicts)
    detached and moved to the CPU, so that it pickles by value: a CUDA tensor
    or one sent through multiprocessing's shared memory would not outlive the
    rank that made it."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def die(report: FailureReport) -> None:
    """Print this rank's report (the cause in full, a lost peer as one line)
    and leave without tearing down the process group, which could block on the
    failed peer."""
    if report.kind == "cause" or (report.kind == "same" and report.rank == 0):
        print(f"conveyor: {report.text()}", file=sys.stderr)
    elif report.kind == "peer":
        print(f"conveyor: {report.summary}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
