"""``conveyor``: one entry point, one module per sub-command.

Each module named in COMMANDS defines ``add_parser(subparsers)``, which adds its
sub-command and sets ``func`` to a ``run(args) -> int``. Modules import torch,
matplotlib and the like inside ``run`` only, so ``conveyor --help`` and the
torch-free commands start fast and work without them.

Any ConveyorError becomes one line on stderr and exit code 2; so does bad
usage. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from conveyor import __version__
from conveyor.errors import ConveyorError

__all__ = ["main", "build_parser", "COMMANDS"]

# Order is the order of `conveyor --help`.
COMMANDS = ["demo", "train", "simulate", "schedules", "viz", "plot", "trace", "bench",
            "profile", "plan"]


class UsageError(ConveyorError):
    pass


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="conveyor", description="Pipeline parallelism for PyTorch: "
                    "schedules you can see, predict and run.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"conveyor.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"conveyor.cli.{name}":
                continue  # sub-command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except ConveyorError as e:
        first = str(e) if isinstance(e, UsageError) else str(e)
        print(f"conveyor: error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conveyor: interrupted", file=sys.stderr)
        return 130
