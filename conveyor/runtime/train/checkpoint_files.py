"""Reading a checkpoint's files back, so that every failure names the file
and its cause: missing, empty, truncated, corrupt, another format or
version, a manifest that does not parse (never the zip reader's, pickle's or
the JSON parser's own words). What the files are: ``checkpoint_io`` and
``conveyor.runtime.procs.ckptdir``.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import torch

from conveyor.runtime.procs import ckptdir
from conveyor.runtime.procs.ckptdir import CheckpointError
from conveyor.userfiles import read_json

__all__ = ["FORMAT", "VERSION", "resolve", "read_manifest", "read_rank_file", "file_of"]

FORMAT = "conveyor-checkpoint"
VERSION = 1
_DAMAGED = "the checkpoint is damaged: load another one, or save again"


def resolve(path) -> Path:
    """The checkpoint folder to read: ``path`` when it holds a manifest.
    Raises CheckpointError naming the path and what is there instead."""
    path = Path(path)
    if (path / ckptdir.MANIFEST).exists():
        return path
    if not path.exists():
        why = "it does not exist"
    elif not path.is_dir():
        why = "it is a file, not a checkpoint folder"
    elif (path / ckptdir.MARKER).exists():
        why = ("it holds no manifest.json: its first save did not finish, or a prune was "
               "deleting it")
    else:
        why = "it holds no manifest.json"
    raise CheckpointError(f"no checkpoint at {str(path)!r}: {why}; give the folder that "
                          f"Pipeline.save wrote")


_FIELDS = {"P": int, "S": int, "step": int, "portable": bool, "files": dict}


def read_manifest(path) -> dict:
    """The manifest of the checkpoint at ``path``. Raises CheckpointError
    naming the file and the cause: unreadable, broken JSON, another format or
    version, or a field of the wrong type."""
    d = resolve(path)
    where = d / ckptdir.MANIFEST
    fix = _DAMAGED
    manifest = read_json(where, what="checkpoint manifest", error=CheckpointError, fix=fix)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint manifest {str(where)!r} is not a JSON object; {fix}")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint manifest {str(where)!r} is format "
                              f"{manifest.get('format')!r}, not {FORMAT!r}: not a conveyor "
                              f"checkpoint; give the folder that Pipeline.save wrote")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(d)!r} is version {manifest.get('version')!r} of "
                              f"{FORMAT!r}; this conveyor reads version {VERSION}: load it with "
                              f"the conveyor version that wrote it")
    for key, kind in _FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"checkpoint manifest {str(where)!r}: {key!r} is {value!r}, "
                                  f"not {'an' if kind is int else 'a'} {kind.__name__}; {fix}")
    if not isinstance(manifest.get("sizes", {}), dict):
        raise CheckpointError(f"checkpoint manifest {str(where)!r}: 'sizes' is "
                              f"{manifest['sizes']!r}, not a dict; {fix}")
    for f, names in manifest["files"].items():
        if ("/" in f or "\\" in f or f in ("", ".", "..") or not isinstance(names, list)
                or not all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"checkpoint manifest {str(where)!r}: file entry {f!r} is not "
                                  f"a file of the folder with a list of names; {fix}")
    return manifest


def read_rank_file(d: Path, name: str, manifest: dict | None = None) -> dict:
    """One rank file, checked before and after ``torch.load`` so that every
    failure names the file and its cause (missing, empty, truncated, corrupt,
    not a conveyor rank file) instead of the zip reader's or pickle's words."""
    path = d / name
    fix = _DAMAGED
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"checkpoint {str(d)!r}: {name}, which its manifest names, cannot "
                              f"be read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint file {str(path)!r} is not a regular file; {fix}")
    want = ((manifest or {}).get("sizes") or {}).get(name)
    if st.st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty (0 bytes"
                              f"{f' of the {want} its save wrote' if want else ''}); {fix}")
    if isinstance(want, int) and st.st_size != want:
        how = "truncated" if st.st_size < want else "longer than written"
        raise CheckpointError(f"checkpoint file {str(path)!r} is {how}: {st.st_size} bytes, "
                              f"its save wrote {want}; {fix}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end
        how = "corrupt" if isinstance(want, int) else "truncated or corrupt"
        raise CheckpointError(f"checkpoint file {str(path)!r} is {how}: {st.st_size} bytes "
                              f"without a whole zip archive (torch.save writes one); {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged file; named below
        # The reader's own words (zip offsets, pickle opcodes, or advice to
        # retry with weights_only=False, which would run code) help no one.
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt: its {st.st_size} bytes "
                              f"hold a zip archive whose contents do not load "
                              f"({type(e).__name__}); conveyor reads with weights_only=True, so "
                              f"a file holding code or objects other than tensors is refused "
                              f"too; {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint file {str(path)!r} is not a conveyor rank file "
                              f"(no 'model' dict); {fix}")
    return state


def file_of(manifest: dict, rank: int) -> str:
    """The file rank ``rank`` wrote: ``rank{r}.{id}.pt`` (``rank{r}.pt`` in
    checkpoints written before the ids)."""
    for f in manifest["files"]:
        if f == f"rank{rank}.pt" or f.startswith(f"rank{rank}."):
            return f
    raise CheckpointError(f"checkpoint manifest names no file of rank {rank}; {_DAMAGED}")
