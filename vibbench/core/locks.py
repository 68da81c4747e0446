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
def folder_lock(folder: Path, what: str, wait: bool):
    """Hold `folder/.lock`; with wait=False a held lock raises VibbenchError naming the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
