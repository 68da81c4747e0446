"""Atomic writes under faults: SIGKILL in the middle of writing, a full disk, stale temporary files."""

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import vibbench.core.atomic
from vibbench.core.atomic import atomic_write_bytes, remove_stale_temps

# The writer imports atomic.py alone (stdlib only), so a child starts in milliseconds.
WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
payloads = [bytes([v]) * int(sys.argv[3]) for v in (1, 2)]
print("writing", flush=True)
i = 0
while True:
    atomic.atomic_write_bytes(sys.argv[2], payloads[i % 2])
    i += 1
"""
SIZE = 8 << 20  # large enough that a kill usually lands inside write() or fsync()
KILLS = 12


def dead_pid() -> int:
    """The pid of a process that has exited (reuse within the test is vanishingly unlikely)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigkill_during_atomic_writes_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "result.bin"
    rng = random.Random(0)
    outcomes = []
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", WRITER, vibbench.core.atomic.__file__, str(target), str(SIZE)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "writing\n"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        left = [name for name in temps(tmp_path) if f".{child.pid}." in name]
        outcomes.append(("mid-write" if left else "between writes", target.exists()))
        if target.exists():  # one complete version: 8 MiB of one byte value
            data = target.read_bytes()
            assert len(data) == SIZE and data[:1] in (b"\x01", b"\x02") and data == data[:1] * SIZE
    # the test only means something if kills landed inside writes
    assert sum(kind == "mid-write" for kind, _ in outcomes) >= 1, outcomes
    leftovers = temps(tmp_path)
    assert leftovers  # the killed writers' temporary files ...
    assert all(name.startswith(".result.bin.") for name in leftovers)
    live = tmp_path / f".result.bin.{os.getpid()}.abc123.tmp"  # ... and one of a writer still running (us)
    live.write_bytes(b"in progress")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == leftovers  # the dead writers' files go, nothing else
    assert temps(tmp_path) == [live.name] and target.stat().st_size == SIZE


def test_stale_temps_only_matching_names_and_dead_writers(tmp_path):
    dead = dead_pid()
    stale = [tmp_path / f".metrics.csv.{dead}.k2j4_x.tmp", tmp_path / "figures" / f".a.png.{dead}.q.tmp"]
    keep = [tmp_path / "notes.tmp", tmp_path / f".metrics.csv.{os.getpid()}.zz.tmp", tmp_path / "metrics.csv", tmp_path / f".x.{dead}.tmp"]
    for path in stale + keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale[0]]  # not recursive by default
    assert remove_stale_temps(tmp_path, recursive=True) == [stale[1]]
    assert all(p.exists() for p in keep)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_disk_full_keeps_the_old_file_and_leaves_no_temporary(tmp_path, full_disk):
    target = tmp_path / "metrics.csv"
    atomic_write_bytes(target, b"old, complete\n")
    full_disk.add("metrics.csv")
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"new" * 100_000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)  # names the target, not the temporary
    assert target.read_bytes() == b"old, complete\n"
    assert temps(tmp_path) == []


def test_the_next_run_removes_what_killed_writers_left(tmp_path):
    """Temporary files of dead writers in the output folder, a job folder and the cache are removed; results are unaffected."""
    from vibbench.cli import main
    from vibbench.runs.config import make_run_config
    from vibbench.runs.cache import job_dir

    out, cache = tmp_path / "out", tmp_path / "cache"
    cfg = make_run_config("smoke", dataset="synthetic", models=["mlp_vib"], device="cpu", evaluate=False)
    pid = dead_pid()
    stale = [
        out / f".metrics.csv.{pid}.a1.tmp",
        out / "figures" / f".error.png.{pid}.b2.tmp",
        job_dir(cache, cfg.job_hash(cfg.models[0], 0)) / f".model.pt.{pid}.c3.tmp",
        cache / f".write-test.{pid}.d4.tmp",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    argv = ["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_vib", "--no-eval", "--out", str(out), "--cache-dir", str(cache)]
    assert main(argv) == 0
    assert not any(p.exists() for p in stale)
    assert [p for p in tmp_path.rglob("*.tmp")] == []
    assert (out / "metrics.csv").stat().st_size > 0
