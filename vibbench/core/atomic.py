"""Atomic file writes and checksums: nothing half-written is ever left behind.

A file is written to a temporary `.<name>.<pid>.<random>.tmp` in the same folder, flushed,
fsynced and renamed over the target, so a reader sees the old file or the complete new one.
A process killed mid-write leaves only its temporary file; `remove_stale_temps` deletes those
whose writer is no longer running (the next run calls it on the folders it holds).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
"""Temporary files of `atomic_write_bytes`: `.<target name>.<writer pid>.<random>.tmp`."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename.

    A reader sees either the old file or the complete new one, never a partial write,
    even if the process is killed mid-way. On failure (disk full, read-only folder) the
    temporary file is removed, the old file is untouched, and the OSError names `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # the target, not the temporary name
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut after it keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (ours counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files that killed writers left in `folder`; return them.

    Only names `atomic_write_bytes` creates are touched, and only when the process that
    created them is gone, so a concurrent writer's file is never removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _TEMP_NAME.match(path.name)
        if m and path.is_file() and not _pid_alive(int(m.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` to `path` atomically as indented JSON with sorted keys (values JSON lacks become strings)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
