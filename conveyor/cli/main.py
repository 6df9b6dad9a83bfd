"""``conveyor``: one entry point, one module per sub-command.

Each module named in COMMANDS defines ``add_parser(subparsers)``, which adds its
sub-command and sets ``func`` to a ``run(args) -> int``. Modules import torch,
matplotlib and the like inside ``run`` only, so ``conveyor --help`` and the
torch-free commands start fast and work without them.

Any ConveyorError becomes one line on stderr and exit code 2; so does bad
usage, a missing optional dependency (it names the ``pip install`` to run:
NEEDS lists each sub-command's, checked before it runs), an operating-system
error on a file (a last resort: outputs are checked before work starts) and
running out of memory. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from conveyor import __version__
from conveyor.errors import ConveyorError
from conveyor.extras import EXTRAS, missing_extra, require

__all__ = ["main", "build_parser", "COMMANDS"]

# Order is the order of `conveyor --help`.
COMMANDS = ["demo", "simulate", "schedules", "viz", "plot", "trace", "bench", "profile", "plan",
            "torchrun"]
# What each sub-command imports beyond the core (import names; see conveyor.extras).
NEEDS = {"demo": ("torch", "sklearn"), "plot": ("matplotlib",), "bench": ("torch",),
         "profile": ("torch",), "torchrun": ("torch",)}


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
        require(NEEDS.get(args.command, ()), f"conveyor {args.command}")
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in EXTRAS:
                raise
            raise missing_extra(e.name.split(".")[0], f"conveyor {args.command}") from None
    except ConveyorError as e:
        print(f"conveyor: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" {e.filename!r}" if e.filename else ""
        print(f"conveyor: error: cannot use{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("conveyor: error: out of memory; use a smaller P, M or file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conveyor: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    """The error's first line; a validation grid that follows it goes to
    --help-level detail (the one-line contract of the CLI)."""
    lines = text.strip().splitlines()
    return lines[0] if lines else text
