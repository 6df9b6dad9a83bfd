"""One spelling per concept on every sub-command, and the old spellings kept
for one release as deprecated aliases.

| concept | flag | API keyword |
|---|---|---|
| P, pipeline ranks | ``-P``, ``--ranks`` | ``P=`` (``search``, ``measure``) |
| M, micro-batches per step | ``-M``, ``--microbatches`` | ``microbatches=`` |
| batch size, samples per step | ``--batch-size`` | ``batch_size=`` |
| schedule, one name | ``-s``, ``--schedule`` | ``schedule=`` |
| schedules, a list | ``-s``, ``--schedules`` | ``schedules=`` |

``launch(nprocs=)`` counts processes, dp x P, as torchrun's
``--nproc-per-node`` does, so it keeps its own name.

Deprecated (removed in 0.3): ``--stages`` (demo, simulate, bench; was P),
``--batch`` (plan; was the batch size). Each still works and prints one
warning line naming its replacement. ``tests/cli/test_surface.py`` freezes
every sub-command's flags against one table.
"""

from __future__ import annotations

import argparse
import sys

from conveyor.deprecation import REMOVED_IN

__all__ = ["add_deprecated", "REMOVED_IN"]


class _Deprecated(argparse.Action):
    """Stores like the flag it stands for, after one warning on stderr."""

    def __init__(self, option_strings, dest, *, use: str, **kw):
        self.use = use
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"conveyor: warning: {option_string} is deprecated and will be removed in "
              f"{REMOVED_IN}; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(p, old: str, *, dest: str, use: str, type=None, metavar=None) -> None:
    """``old`` as a hidden alias of the flag ``use`` that stores into ``dest``
    (its default stays the canonical flag's)."""
    p.add_argument(old, dest=dest, action=_Deprecated, use=use, type=type, metavar=metavar,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
