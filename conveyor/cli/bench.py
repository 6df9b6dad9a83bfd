"""``conveyor bench``: conveyor vs torch.distributed.pipelining on this machine.

A small version of ``benchmarks/bench_pipeline.py``: the same workloads,
measurements and table, on a grid that finishes in about a minute on two CPU
cores. Emulated device time by default (layers that sleep for a set forward
and backward time, so many stages fit on few cores); ``--workload mlp`` runs a
real deep MLP instead. torch is imported only when the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from conveyor.cli.argtypes import int_at_least

__all__ = ["add_parser", "run"]


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``2,4,8``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 2,4") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1, e.g. 2,4")
    return values


def name_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name")
    return values


def milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"{text!r} ms: give 0 to 60000 milliseconds")
    return value


count = int_at_least(0)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark conveyor against torch.distributed.pipelining",
                       description="Run conveyor and torch.distributed.pipelining in turns on "
                                   "the same model, schedule, P, M and batch, one process per "
                                   "stage, and print step time against the simulator's ideal, "
                                   "bubble and activations held.")
    p.add_argument("--workload", choices=["emulated", "mlp"], default="emulated",
                   help="emulated device time (sleeping layers), or a real deep MLP (emulated)")
    p.add_argument("-P", "--stages", dest="Ps", type=int_list, default=None,
                   help="stage counts, comma-separated (emulated: 2,4; mlp: 2)")
    p.add_argument("-M", "--microbatches", dest="Ms", type=int_list, default=None,
                   help="micro-batch counts, comma-separated (emulated: 4,8,16; mlp: 16)")
    p.add_argument("-s", "--schedules", type=name_list, default=["gpipe", "1f1b"],
                   help="schedules, comma-separated (gpipe,1f1b)")
    p.add_argument("--frameworks", type=name_list, default=["conveyor", "torch"],
                   help="which to run, comma-separated (conveyor,torch)")
    p.add_argument("--forward-ms", type=milliseconds, default=10.0, metavar="MS",
                   help="emulated forward time per stage and micro-batch (10)")
    p.add_argument("--backward-ms", type=milliseconds, default=20.0, metavar="MS",
                   help="emulated backward time per stage and micro-batch (20)")
    p.add_argument("--repeats", type=count, default=3, help="timed steps per framework (3)")
    p.add_argument("--warmup", type=count, default=1, help="untimed steps first (1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="cuda when present (auto), or force one")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.set_defaults(func=run)


def _settings(args):
    """Configs from the arguments; BenchError (exit 2) before torch is imported."""
    from conveyor.bench.config import EmulatedWorkload, MLPWorkload, RunSettings

    if args.workload == "mlp":
        workload = MLPWorkload()
        Ps, Ms = args.Ps or [2], args.Ms or [16]
    else:
        workload = EmulatedWorkload(forward=args.forward_ms / 1000,
                                    backward=args.backward_ms / 1000)
        Ps, Ms = args.Ps or [2, 4], args.Ms or [4, 8, 16]
    # No separate RSS run: the table shows activations held, and time matters here.
    settings = RunSettings(repeats=args.repeats, warmup=args.warmup,
                           frameworks=tuple(args.frameworks), memory=False)
    return workload, Ps, Ms, settings


def _device(choice: str, P: int) -> str:
    """cpu or cuda. NCCL gives each rank its own GPU, so cuda needs P of them."""
    if choice == "cpu":
        return "cpu"
    from conveyor.bench.config import BenchError
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "cuda" and gpus < P:
        raise BenchError(f"--device cuda with P={P} needs {P} GPUs (one per rank under "
                         f"NCCL), but torch sees {gpus}; lower -P or use --device cpu")
    return "cuda" if gpus >= P else "cpu"


def run(args) -> int:
    from conveyor.bench.config import BenchError
    from conveyor.bench.driver import check_grid

    workload, Ps, Ms, settings = _settings(args)
    check_grid(workload, Ps, Ms, args.schedules)
    device = _device(args.device, max(Ps))

    from conveyor.bench.driver import run_benchmark
    from conveyor.bench.progress import ProgressBar
    from conveyor.bench.report import text_table

    total = len(Ps) * len(Ms) * len(args.schedules)
    bar = ProgressBar(total, title="bench ")
    try:
        result = run_benchmark(workload=workload, Ps=Ps, Ms=Ms, schedules=args.schedules,
                               settings=settings, device=device, on_progress=bar.advance)
    finally:
        bar.close()
    print(f"{workload.kind} workload on {device}: step times are medians of "
          f"{settings.repeats}; ratio = measured / simulator's ideal; bubble "
          f"formula/conveyor/torch; micro-batches held on stage 0 conveyor/torch")
    print(text_table(result["rows"]))
    speedups = [r for r in result["rows"] if "speedup" in r]
    if speedups:
        print("speedup over one process (unsplit, timed in turns): " + ", ".join(
            f"{r['framework']} {r['schedule']} M={r['M']} {r['speedup']:.2f} "
            f"(ideal {r['speedup_ideal']:.2f})" for r in speedups))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
