"""``conveyor torchrun``: torch's torchrun, whose stop by a signal ends in one line.

torchrun's agent turns SIGTERM, SIGINT, SIGHUP and SIGQUIT into an exception
after it has stopped its workers, and Python prints that exception as a
traceback of some 30 lines of torch's own frames ("SignalException: Process
N got signal: 15") where the user expects a word on what happened. This
sub-command runs the same torchrun (every option passes through unchanged)
and says it in one line instead; a worker's failure is summed up the same
way, below the failing rank's own report (which conveyor's ``launch``
prints).
"""

from __future__ import annotations

import signal
import sys

from conveyor.errors import ConveyorError


def add_parser(sub) -> None:
    # Every argument is torchrun's: no option of ours, so none is parsed here
    # ("\0" never starts an argument, so even -h goes through to torchrun).
    p = sub.add_parser("torchrun", prefix_chars="\0", add_help=False,
                       help="torchrun with the same options; a stop by signal or a failed "
                            "worker ends in one line, not a traceback",
                       description="conveyor torchrun [torchrun options] script.py [args]")
    p.add_argument("args", nargs="*")
    p.set_defaults(func=run)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def run(args) -> int:
    if not args.args:
        raise ConveyorError("give torchrun's options and the script to run, e.g. `conveyor "
                            "torchrun --standalone --nproc-per-node 4 train.py`")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(args.args))
    except SignalException as e:
        n = int(e.sigval)
        print(f"conveyor: torchrun was stopped by signal {n} ({_signal_name(n)}) from outside "
              f"(kill, a job scheduler's limit, Ctrl-C, a closed terminal); it stopped its "
              f"workers first and none is left running. Nothing needs fixing unless the stop "
              f"was unexpected: then find what sent it", file=sys.stderr)
        return 128 + n
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = (f"was killed by signal {-failure.exitcode} ({_signal_name(-failure.exitcode)})"
               if failure.exitcode < 0 else f"exited with code {failure.exitcode}")
        print(f"conveyor: torchrun: worker rank {rank} {how}; its report is above "
              f"(conveyor's launch prints the cause once), and torchrun stopped the other "
              f"workers", file=sys.stderr)
        return 1
    return 0
