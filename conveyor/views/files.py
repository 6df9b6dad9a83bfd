"""Writing output files so that a failure never leaves a partial one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from conveyor.views.errors import ViewError

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it
    into place. On any error the temporary file is removed and ``path`` is left
    as it was. Raises ViewError when the folder does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ViewError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not "
                        f"exist; create it or choose another output path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
