"""Faults injected into a real `vibbench run` process: SIGKILL at random moments, SIGINT, a second process."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_dropout", "mlp_vib", "--epochs", "3"]


def start(out, cache, extra=()):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vibbench", *ARGS, "--out", str(out), "--cache-dir", str(cache), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(out, cache):
    p = start(out, cache)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return err


def no_partial_files(*folders):
    for folder in folders:
        for root, _, files in os.walk(folder):
            assert not [f for f in files if f.endswith(".tmp")], (root, files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    finish(base / "out", base / "cache")
    return (base / "out" / "metrics.csv").read_bytes()


def kill_and_resume(tmp_path, reference, delays):
    out, cache = tmp_path / "out", tmp_path / "cache"
    for delay in delays:
        p = start(out, cache)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    err = finish(out, cache)
    no_partial_files(out, cache)
    assert (out / "metrics.csv").read_bytes() == reference
    return err


def test_sigkill_during_training_then_resume_gives_identical_metrics(tmp_path, reference):
    err = kill_and_resume(tmp_path, reference, [4.0])
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments(tmp_path, reference, seed):
    rng = random.Random(seed)
    kill_and_resume(tmp_path, reference, [rng.uniform(2.0, 25.0) for _ in range(3)])


def test_sigint_stops_cleanly_with_a_resume_message(tmp_path):
    p = start(tmp_path / "out", tmp_path / "cache")
    time.sleep(4.0)
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 130 and "rerun the same command to resume" in err and "Traceback" not in err


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    first = start(tmp_path / "out", tmp_path / "cache")
    time.sleep(3.0)
    second = start(tmp_path / "out", tmp_path / "cache2")
    _, err = second.communicate(timeout=120)
    first.communicate(timeout=600)
    assert second.returncode == 2 and "another vibbench process is writing the output folder" in err
