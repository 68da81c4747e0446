"""Fixtures of the run tests: the processes that run jobs, found and killed mid-job through their job folders' locks."""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from vibbench.cli import main


class MidJob:
    """Processes running a job, found through the flock each holds on its job folder's lock (/proc/locks)."""

    @staticmethod
    def lock_holder(lock: Path) -> int | None:
        """The pid holding an flock on `lock`."""
        st = lock.stat()
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" not in fields and fields[1] == "FLOCK" and fields[5] == ident:
                return int(fields[4])
        return None

    def find(self, cache: Path, exclude: set[int]) -> int | None:
        """A process, not in `exclude`, running a job whose model is trained and whose first evaluation section is written."""
        for section in cache.glob("jobs/*/eval-calibration-*.json"):
            pid = self.lock_holder(section.parent / ".lock")
            if pid is not None and pid not in exclude:
                return pid
        return None

    @contextlib.contextmanager
    def killing(self, cache: Path):
        """While the block runs, SIGKILL the first process other than this one found mid-evaluation; yields the
        list of killed pids (empty if none was found)."""
        killed: list[int] = []
        done = threading.Event()

        def kill():
            while not done.is_set() and not killed:
                pid = self.find(cache, {os.getpid()})
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.02)

        killer = threading.Thread(target=kill)
        killer.start()
        try:
            yield killed
        finally:
            done.set()
            killer.join()


@pytest.fixture
def mid_job() -> MidJob:
    if not Path("/proc/locks").exists():
        pytest.skip("finds the worker through /proc/locks (Linux)")
    return MidJob()


@pytest.fixture(scope="session")
def local_metrics(tmp_path_factory) -> bytes:
    """metrics.csv of the smoke sweep (synthetic data) run by the local executor on one torch thread: the reference
    every other executor must reproduce byte for byte with one thread per job (CPU kernels' sums depend on the thread
    count in their last bits, see README)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("local")
    try:
        code = main(["run", "--profile", "smoke", "--dataset", "synthetic", "--out", str(base / "out"), "--cache-dir", str(base / "cache"), "--executor", "local"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return (base / "out" / "metrics.csv").read_bytes()
