"""A checkpoint folder on disk: what conveyor writes into it, and proof of what
it wrote, so that a save or a prune removes nothing else.

Layout of a checkpoint folder (the path given to ``Pipeline.save``)::

    .conveyor-checkpoint   the marker, written first: {"format", "made_folder"}.
                           made_folder says whether conveyor created the folder
                           (only then may a prune remove the folder itself)
    manifest.json          the commit: written last (a temporary file renamed
                           over it), it names the rank files that hold the
                           checkpoint, with their sizes
    rank{r}.{id}.pt        rank r's file of the save ``id`` (16 hex digits,
                           random per save): a new save never writes over the
                           files the current manifest names
    .conveyor-save.json    the journal of a save under way, written before any
                           rank file: the files the save creates and the files
                           it replaces; removed when the save is done

Why this shape: the folder itself is never renamed, so a folder that is a
symbolic link (to a bigger disk) stays one, pointing at its target, and the
whole swap happens inside the target; renaming ``manifest.json`` into place
is the one atomic step. A crash before it leaves the previous checkpoint
whole; a crash after it leaves the new one whole. Either way the files the
crash left are named in the journal, and the next save (or prune) removes
exactly those, never by a pattern. A name is removed only when it is a plain
``rank{r}[.{id}].pt`` / ``manifest.{id}.tmp`` name inside the folder (a
manifest or journal naming ``../x`` removes nothing), and a folder only when
conveyor made it and it is empty.

A folder that is not conveyor's (no marker, no conveyor manifest) and is not
empty is refused: ``CheckpointError`` names it and what is in it.

No torch: ``elastic`` (prune) and ``checkpoint_io`` (save, load) share it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from conveyor.errors import PipelineError

__all__ = ["CheckpointError", "MARKER", "MANIFEST", "JOURNAL", "new_id", "rank_file", "begin",
           "commit", "remove", "is_ours", "write_new"]

MARKER = ".conveyor-checkpoint"
MANIFEST = "manifest.json"
JOURNAL = ".conveyor-save.json"
DELETING = ".conveyor-delete.json"
_MARKER_FORMAT = "conveyor-checkpoint-folder/1"
_OURS = re.compile(r"^(rank\d+(\.[0-9a-f]{16})?\.pt|manifest\.[0-9a-f]{16}\.tmp)$")


class CheckpointError(PipelineError):
    """A checkpoint is missing, incomplete, damaged, does not fit this
    pipeline, or its folder holds files conveyor did not write."""


def new_id() -> str:
    return secrets.token_hex(8)


def rank_file(rank: int, save_id: str) -> str:
    return f"rank{rank}.{save_id}.pt"


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist: O_EXCL) with ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json(path: Path):
    """The JSON object in a small file conveyor wrote, or None when it is
    missing, not a regular file, too large or not a JSON object."""
    try:
        if not path.is_file() or path.stat().st_size > 16 * 2 ** 20:
            return None
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _marker(d: Path) -> dict | None:
    m = _json(d / MARKER)
    return m if m is not None and m.get("format") == _MARKER_FORMAT else None


def _manifest_files(d: Path, name: str = MANIFEST) -> set[str]:
    m = _json(d / name)
    files = m.get("files") if m is not None and m.get("format") == "conveyor-checkpoint" else None
    return set(files) if isinstance(files, dict) else set()


def is_ours(d: Path) -> bool:
    """Whether folder ``d`` is a conveyor checkpoint folder: it has the
    marker, or (written before the marker existed) a conveyor manifest."""
    return _marker(d) is not None or bool(_manifest_files(d))


def _unlink(d: Path, names) -> None:
    """Remove these files of folder ``d``: only plain names conveyor gives
    its files, never a path, never a folder."""
    for name in names:
        if isinstance(name, str) and _OURS.match(name):
            try:
                os.unlink(d / name)
            except (FileNotFoundError, IsADirectoryError, PermissionError, OSError):
                pass


def _finish_journal(d: Path) -> None:
    """What a save that crashed left: the files its journal names that the
    current manifest does not (the new files when it crashed before its
    commit, the replaced ones when after), then the journal."""
    path = d / JOURNAL
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is not conveyor's journal of a save (it is not a "
                              f"file); conveyor will not remove it: move it")
    j = _json(path) or {}
    keep = _manifest_files(d)
    named = [n for key in ("creates", "replaces") for n in (j.get(key) or [])
             if isinstance(n, str)]
    _unlink(d, [n for n in named if n not in keep])
    # A journal that does not parse was cut short while being written, before
    # any rank wrote a file: there is nothing else to remove.
    os.unlink(path)


def begin(path, *, nfiles: int, save_id: str) -> Path:
    """Rank 0, before a save: make ``path`` a checkpoint folder conveyor may
    write into, clear what a crashed save left there, and write the journal
    of this save (``nfiles`` rank files with ``save_id``). Returns the folder.

    Raises CheckpointError when ``path`` is a file, a link to nothing, or a
    folder that holds files and is not a conveyor checkpoint."""
    d = Path(path)
    if d.is_symlink() and not d.exists():
        raise CheckpointError(f"checkpoint folder {str(d)!r} is a symbolic link to "
                              f"{os.readlink(d)!r}, which does not exist; create the target "
                              f"folder or give another path")
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"cannot save a checkpoint at {str(d)!r}: it is a file; give a "
                              f"folder path (new, empty, or a checkpoint conveyor wrote)")
    made = False
    if not d.exists():
        try:
            d.mkdir(parents=True)
            made = True
        except FileExistsError:  # made meanwhile (another job): judged below like any folder
            pass
        except OSError as e:
            raise CheckpointError(f"cannot create checkpoint folder {str(d)!r}: "
                                  f"{e.strerror}; give a writable path") from None
    if not made and not is_ours(d):
        found = sorted(os.listdir(d))
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise CheckpointError(
                f"{str(d)!r} is not a conveyor checkpoint and holds {len(found)} "
                f"entr{'y' if len(found) == 1 else 'ies'} conveyor did not write ({shown}); "
                f"conveyor never replaces them: save into a new or empty folder, or move them")
    if _marker(d) is None:
        if (d / MARKER).exists() or (d / MARKER).is_symlink():
            raise CheckpointError(f"{str(d / MARKER)!r} is not conveyor's marker file; "
                                  f"conveyor will not write over it: move it")
        write_new(d / MARKER, json.dumps({"format": _MARKER_FORMAT,
                                          "made_folder": made}).encode())
    _finish_journal(d)
    creates = [rank_file(r, save_id) for r in range(nfiles)] + [f"manifest.{save_id}.tmp"]
    write_new(d / JOURNAL, json.dumps({"id": save_id, "creates": creates,
                                       "replaces": sorted(_manifest_files(d))}).encode())
    _fsync_dir(d)
    return d


def commit(d: Path, manifest: dict, save_id: str) -> None:
    """Rank 0, after every rank wrote its file: publish ``manifest`` (the
    atomic step), then remove the files it replaces and the journal."""
    tmp = d / f"manifest.{save_id}.tmp"
    write_new(tmp, json.dumps(manifest, indent=1).encode())
    os.replace(tmp, d / MANIFEST)
    _fsync_dir(d)
    _finish_journal(d)
    _fsync_dir(d)


def remove(d: Path) -> bool:
    """Delete the checkpoint in folder ``d`` (a prune): first un-publish it
    (its manifest renamed, so a crash midway never leaves a partial
    checkpoint that looks whole), then the files conveyor wrote, the marker,
    and the folder itself when conveyor made it and nothing else is in it.
    Files conveyor did not write stay. Returns whether the folder is gone."""
    if not is_ours(d) and not (d / DELETING).exists():
        return False
    made = bool((_marker(d) or {}).get("made_folder"))
    if (d / MANIFEST).is_file():
        os.replace(d / MANIFEST, d / DELETING)
    _finish_journal(d)
    _unlink(d, _manifest_files(d, DELETING))
    for name in (DELETING, MARKER):
        try:
            os.unlink(d / name)
        except FileNotFoundError:
            pass
    if made:
        try:
            os.rmdir(d)  # fails, and leaves it, when the user put something in it
            return True
        except OSError:
            return False
    return False
