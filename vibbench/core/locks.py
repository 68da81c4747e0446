"""Advisory file locks, so that two vibbench processes never write the same files at once.

An output folder is held for the whole run (a second run on it fails with a message); a job
folder is held while its model trains or is evaluated (a second process waits for it and then
finds the job finished in the cache). Locks are fcntl locks: the kernel releases them when the
process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, wait: bool, tidy: bool = False):
    """Hold `folder/.lock`; with wait=False a held lock raises VibbenchError naming the folder.

    With tidy=True the lock file is deleted on exit, and so are the folders this call created if they are empty
    then: a run that fails before writing anything leaves the file system as it found it. (Whoever takes the lock
    checks that the file it locked is still the one at `.lock`, so deleting it never lets two processes in.)"""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = _locked(path, what, folder, wait)
    try:
        yield
    finally:
        if tidy:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)  # closing the descriptor releases the lock
        if tidy:
            for p in created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break  # not empty (the run wrote into it) or not ours to remove


def _locked(path: Path, what: str, folder: Path, wait: bool) -> int:
    """A descriptor of `path` holding its exclusive lock (see `folder_lock`)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise VibbenchError(
                        f"another vibbench process is writing the {what} {folder}; wait for it to finish or choose another --out"
                    ) from None
                log(f"waiting for another vibbench process working on {folder}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)  # the holder deleted the file we locked on its way out: lock the current one
