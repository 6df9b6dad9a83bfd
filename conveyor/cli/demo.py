"""``conveyor demo``: train a deep MLP on scikit-learn's digits across local processes."""

from __future__ import annotations

from conveyor.errors import ConveyorError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a deep MLP across local processes and show its bubble",
        description="Train a deep MLP (16 residual blocks) on scikit-learn's digits, one "
                    "process per pipeline stage, and report the test accuracy and the "
                    "measured, simulated and closed-form pipeline bubble.")
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
    p.add_argument("--model", choices=["mlp", "gpt"], default="mlp",
                   help="mlp (default): the digits MLP; gpt: a small GPT on the Python "
                        "standard library's source (see conveyor.models.gpt_demo)")
    p.add_argument("--steps", type=int, default=300, help="gpt: training steps (default 300)")
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.runtime.demo import DemoConfig, run_demo

    if args.model == "gpt":
        from conveyor.models.gpt_demo import run_cli
        return run_cli(args)

    for name in ("stages", "microbatches", "epochs", "batch_size", "blocks", "width"):
        if getattr(args, name) < 1:
            raise ConveyorError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(args, name)}")
    cfg = DemoConfig(stages=args.stages, microbatches=args.microbatches, schedule=args.schedule,
                     epochs=args.epochs, batch_size=args.batch_size, blocks=args.blocks,
                     width=args.width, lr=args.lr, seed=args.seed, out=args.out,
                     progress=not args.no_progress, backend=args.backend)
    run_demo(cfg)
    return 0
