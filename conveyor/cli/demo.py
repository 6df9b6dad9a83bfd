"""``conveyor demo``: train a deep MLP on scikit-learn's digits across local processes."""

from __future__ import annotations

from dataclasses import replace

from conveyor.cli.argtypes import (
    check_output_dir, int_at_least, int_list, milliseconds, positive_float,
)
from conveyor.cli.names import add_deprecated
from conveyor.errors import ConveyorError

__all__ = ["add_parser", "run"]


TRAIN_IMAGES = 1437  # scikit-learn's digits, less the 20 % held out for testing


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a deep MLP across local processes and show its bubble",
        description="Train an MLP of 18 Linear layers (an input layer, 16 residual blocks "
                    "of one Linear each (--blocks), a LayerNorm+Linear head) on scikit-learn's "
                    "digits, one process per pipeline stage, and report the test accuracy and the "
                    "measured, simulated and closed-form pipeline bubble. Then a measured "
                    "sweep over M on the same processes and schedule, with emulated device "
                    "time, shows the bubble shrink as M grows.")
    p.add_argument("-P", "--ranks", dest="stages", type=int_at_least(1, 64), default=4,
                   metavar="P", help="pipeline ranks: processes, one stage each (default 4)")
    add_deprecated(p, "--stages", dest="stages", use="-P/--ranks", type=int_at_least(1, 64))
    p.add_argument("-M", "--microbatches", type=int_at_least(1, 1437), default=8, metavar="M",
                   help="micro-batches per step (default 8)")
    p.add_argument("-s", "--schedule", default="1f1b", help="schedule name (default 1f1b)")
    p.add_argument("--epochs", type=int_at_least(1, 10000), default=8, help="passes over the data (default 8)")
    p.add_argument("--batch-size", type=int_at_least(1, 1437), default=64, help="images per step (default 64)")
    p.add_argument("--blocks", type=int_at_least(1, 1024), default=16,
                   help="hidden residual blocks, one Linear each; the model has blocks + 2 "
                        "layers (default 16)")
    p.add_argument("--width", type=int_at_least(1, 65536), default=128, help="hidden features (default 128)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl when CUDA is present, else gloo")
    p.add_argument("--out", default="runs/demo",
                   help="folder for timeline.json and summary.json (default runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--model", choices=["mlp", "gpt"], default="mlp",
                   help="mlp (default): the digits MLP; gpt: a small GPT on the Python "
                        "standard library's source (see conveyor.models.gpt_demo)")
    p.add_argument("--steps", type=int_at_least(1, 100000), default=300, help="gpt: training steps (default 300)")
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
    from conveyor.demo.digits import DemoConfig, run_demo
    from conveyor.demo.sweep import SweepConfig, check_sweep

    if args.model == "gpt":
        from conveyor.models.gpt_demo import run_cli
        return run_cli(args)

    from conveyor.schedule import get_spec

    get_spec(args.schedule)
    if args.stages > args.blocks + 2:
        raise ConveyorError(f"-P {args.stages} exceeds the model's {args.blocks + 2} "
                            f"layers (--blocks {args.blocks} + 2); use fewer stages or more "
                            f"blocks")
    # The 1437 training images are cut into batches; the last one is the smallest.
    last = TRAIN_IMAGES % args.batch_size or args.batch_size
    if min(args.batch_size, last) < args.microbatches:
        raise ConveyorError(f"--batch-size {args.batch_size} leaves batches of "
                            f"{min(args.batch_size, last)} images, fewer than -M "
                            f"{args.microbatches} micro-batches; raise the batch size or "
                            f"lower -M")
    check_output_dir(args.out)
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
