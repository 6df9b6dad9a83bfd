"""Writing output files so that a failure never leaves a partial one behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from conveyor.views.errors import ViewError

__all__ = ["atomic_write"]


def _create_beside(path: Path) -> str:
    """Create a new, empty temporary file next to ``path`` and return its name.

    Created with mode 0666 through os.open, so the kernel applies the
    process's umask itself, as for a plain open(): the file ends up with the
    mode any other output of the user's would have. (Reading the umask needs
    umask(0) and back, which races with other threads creating files.)
    O_EXCL with a random name: never an existing file, whoever made it."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise ViewError(f"cannot create a temporary file beside {str(path)!r}; choose another "
                    f"output path")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it
    into place. On any error the temporary file is removed and ``path`` is left
    as it was. Raises ViewError when the folder does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ViewError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not "
                        f"exist; create it or choose another output path")
    tmp = _create_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
