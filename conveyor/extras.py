"""Optional dependencies: which extra installs each, and the one-line error
when one is missing (no torch).

``pip install conveyor`` gives the core and the runtime (torch, numpy); the
figures need matplotlib (``conveyor[viz]``) and the demo scikit-learn, for its
bundled digits data (``conveyor[demo]``).
"""

from __future__ import annotations

import importlib.util

from conveyor.errors import ConveyorError

__all__ = ["EXTRAS", "MissingExtraError", "missing_extra", "require"]

# import name -> (distribution, the extra that installs it; None: a core dependency)
EXTRAS: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", None),
    "numpy": ("numpy", None),
    "matplotlib": ("matplotlib", "viz"),
    "sklearn": ("scikit-learn", "demo"),
    "transformers": ("transformers", "hf"),
}


class MissingExtraError(ConveyorError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def missing_extra(module: str, who: str) -> MissingExtraError:
    """The error for ``who`` (e.g. "conveyor plot") lacking ``module`` (an import name)."""
    dist, extra = EXTRAS.get(module, (module, None))
    target = f"'conveyor[{extra}]'" if extra else "conveyor"
    return MissingExtraError(f"{who} needs {dist}: pip install {target}")


def require(modules, who: str) -> None:
    """Raise MissingExtraError for the first of ``modules`` (import names) that
    cannot be imported here; import nothing."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise missing_extra(module, who)
