"""A full disk and a read-only output folder: one clear message, before any training where that can be known."""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vibbench.cli import main
from vibbench.runs.cache import PROBE_BYTES

SMOKE = ["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_vib", "--no-eval"]


def vibbench_process(args, preexec_fn=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vibbench", *map(str, args)], capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn, env=os.environ | (env or {})
    )


def tmp_files(folder: Path):
    return [p for p in folder.rglob("*.tmp")]


def test_file_size_limit_fails_before_training(tmp_path):
    """RLIMIT_FSIZE below the 64 KiB probe: larger writes fail with EFBIG, as on a full disk (a real fault, no mock)."""
    limit = PROBE_BYTES // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out, cache = tmp_path / "out", tmp_path / "cache"
    r = vibbench_process([*SMOKE, "--out", out, "--cache-dir", cache], preexec_fn=small_files)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"vibbench: error: cannot write to the output folder {out}: File too large (a file size limit was reached). Choose another folder or free space."
    )
    assert not (cache / "jobs").exists() and "trained" not in r.stderr  # nothing was trained
    assert tmp_files(tmp_path) == []


def test_disk_full_while_writing_results_keeps_the_old_file(tmp_path, full_disk, capsys):
    """ENOSPC when metrics.csv is written (after the checks passed): the old file stays, no temporary is left, one clear line."""
    argv = [*SMOKE, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    metrics = tmp_path / "out" / "metrics.csv"
    assert main(argv) == 0
    before = metrics.read_bytes()
    full_disk.add("metrics.csv")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("vibbench: error:") == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vibbench: error: {metrics}: No space left on device (the disk is full).")
    assert "rerun the same command to resume" in last
    assert metrics.read_bytes() == before
    assert tmp_files(tmp_path) == []
    full_disk.clear()  # space is back: the same command finishes from the cache
    assert main(argv) == 0 and metrics.read_bytes() == before


def test_read_only_output_folder_fails_before_training(tmp_path, capsys):
    """A folder nobody may write to: mode 0o555, and for root (who ignores modes) the immutable attribute."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only for this user")
    try:
        if not immutable and os.access(out, os.W_OK):
            pytest.skip("this user may write to a read-only folder")
        assert main([*SMOKE, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1
        assert err.startswith(f"vibbench: error: cannot write to the output folder {out}: ")
        assert "(the folder is read-only or belongs to someone else). Choose another folder" in err
        assert list(out.iterdir()) == [] and not (tmp_path / "cache").exists()  # nothing written, nothing trained
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(out)], check=True)
        out.chmod(0o755)
