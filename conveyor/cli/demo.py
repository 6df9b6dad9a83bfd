"""``conveyor demo``: train a deep MLP on scikit-learn's digits across local processes."""

from __future__ import annotations

from dataclasses import replace

from conveyor.cli.bench import int_list, milliseconds
from conveyor.errors import ConveyorError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a deep MLP across local processes and show its bubble",
        description="Train a deep MLP (16 residual blocks) on scikit-learn's digits, one "
                    "process per pipeline stage, and report the test accuracy and the "
                    "measured, simulated and closed-form pipeline bubble. Then a measured "
                    "sweep over M on the same processes and schedule, with emulated device "
                    "time, shows the bubble shrink as M grows.")
    p.add_argument("--stages", "-P", type=int, default=4, help="processes / stages (default 4)")
    p.add_argument("--microbatches", "-M", type=int, default=8,
                   help="micro-batches per step (default 8)")
    p.add_argument("--schedule", default="1f1b", help="schedule name (default 1f1b)")
    p.add_argument("--epochs", type=int, default=8, help="passes over the data (default 8)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--blocks", type=int, default=16, help="hidden residual blocks (default 16)")
    p.add_argument("--width", type=int, default=128, help="hidden features (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl when CUDA is present, else gloo")
    p.add_argument("--out", default="runs/demo",
                   help="folder for timeline.json and summary.json (default runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-sweep", action="store_true", help="skip the measured sweep over M")
    p.add_argument("--sweep-json", metavar="PATH", default=None,
                   help="also write the sweep's table (sweep.json) to PATH")
    p.add_argument("--sweep-m", metavar="LIST", type=int_list, default=None,
                   help="the sweep's M values, each dividing the batch of 64 "
                        "(default 1,2,4,8,16,32)")
    p.add_argument("--sweep-device-ms", metavar="MS", type=milliseconds, default=None,
                   help="emulated forward time of the whole batch on one stage, in ms; a "
                        "micro-batch takes its share, the backward twice as long "
                        "(default 300)")
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.runtime.demo import DemoConfig, run_demo
    from conveyor.runtime.sweep import SweepConfig, check_sweep

    for name in ("stages", "microbatches", "epochs", "batch_size", "blocks", "width"):
        if getattr(args, name) < 1:
            raise ConveyorError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(args, name)}")
    cfg = DemoConfig(stages=args.stages, microbatches=args.microbatches, schedule=args.schedule,
                     epochs=args.epochs, batch_size=args.batch_size, blocks=args.blocks,
                     width=args.width, lr=args.lr, seed=args.seed, out=args.out,
                     progress=not args.no_progress, backend=args.backend, sweep=None)
    if not args.no_sweep:
        sweep = SweepConfig(json_path=args.sweep_json)
        if args.sweep_m is not None:
            sweep = replace(sweep, microbatches=tuple(args.sweep_m))
        if args.sweep_device_ms is not None:
            sweep = replace(sweep, forward_s=args.sweep_device_ms / 1000)
        check_sweep(sweep)  # before training, not after it
        cfg = replace(cfg, sweep=sweep)
    elif args.sweep_json or args.sweep_m or args.sweep_device_ms is not None:
        raise ConveyorError("--no-sweep turns the sweep off, so --sweep-json, --sweep-m and "
                            "--sweep-device-ms have no effect; drop one or the other")
    run_demo(cfg)
    return 0
