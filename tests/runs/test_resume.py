"""Faults injected into a real `vibbench run` process: SIGKILL in each phase and at random moments, SIGINT, a second process.

Kills are timed by the run's own log lines (read from its stderr as it runs), so "during evaluation"
means what it says; where a kill lands is then checked from what is on disk.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

ARGS = ["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_dropout", "mlp_vib", "--epochs", "3", "--executor", "local"]
"""The local executor: one job after the other in the run's own process, whose phases the kills aim at (worker processes: test_processes.py)."""
SECTIONS = 8  # evaluation sections on disk when both models are evaluated (4 each)


class Run:
    """A `vibbench run` subprocess whose stderr lines are collected as they arrive."""

    def __init__(self, out, cache, extra=()):
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        # SIGINT as in a terminal, even when pytest itself was started in the background (which ignores it)
        default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        self.p = subprocess.Popen([sys.executable, "-m", "vibbench", *ARGS, "--out", str(out), "--cache-dir", str(cache), *extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint)
        self.lines: list[str] = []
        self.times: list[float] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.lines.append(line)
            self.times.append(time.monotonic())

    def seconds_between(self, start: str, end: str) -> float:
        """Time between the arrival of the first lines containing `start` and `end`."""
        (t0,), (t1,) = ([t for line, t in zip(self.lines, self.times) if text in line][:1] for text in (start, end))
        return t1 - t0

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Block until a line containing `text` has been printed (fails if the run ends first)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.p.poll() is None or self.reader.is_alive(), f"the run ended before printing {text!r}:\n{self.err}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.err}"
            time.sleep(0.005)

    def kill(self, sig=signal.SIGKILL) -> bool:
        """Send `sig`; True if the process was still running to receive it."""
        alive = self.p.poll() is None
        self.p.send_signal(sig)
        self.finish()
        return alive

    def finish(self, timeout: float = 600) -> int:
        self.p.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return self.p.returncode

    @property
    def err(self) -> str:
        return "".join(self.lines)


def complete(out, cache) -> str:
    run = Run(out, cache)
    assert run.finish() == 0, run.err
    assert "Traceback" not in run.err
    return run.err


def no_partial_files(*folders):
    for folder in folders:
        for root, _, files in os.walk(folder):
            assert not [f for f in files if f.endswith(".tmp")], (root, files)


def on_disk(out, cache) -> dict:
    """What a killed run left: finished jobs, evaluated sections, results written."""
    return {
        "trained": len(list(cache.glob("jobs/*/result.json"))),
        "evaluated": len(list(cache.glob("jobs/*/eval-*.json"))),
        "metrics": (out / "metrics.csv").exists(),
    }


@pytest.fixture(scope="module")
def first_and_second(tmp_path_factory):
    """An uninterrupted run, and a second run started on its output folder while it runs (one full run serves both tests)."""
    base = tmp_path_factory.mktemp("ref")
    first = Run(base / "out", base / "cache")
    first.wait_for("run smoke-")  # printed while it holds the output folder's lock
    second = Run(base / "out", base / "cache2")
    second.finish(timeout=120)
    assert first.finish() == 0, first.err
    assert "Traceback" not in first.err
    return (base / "out" / "metrics.csv").read_bytes(), second, first.seconds_between("run smoke-", "wrote ")


@pytest.fixture(scope="module")
def reference(first_and_second):
    """metrics.csv of the uninterrupted run: every interrupted run must end with these bytes."""
    return first_and_second[0]


@pytest.fixture(scope="module")
def run_seconds(first_and_second):
    """How long the uninterrupted run took from starting to work to its last write (on this machine, now): the span random kills are drawn from."""
    return first_and_second[2]


def test_sigkill_during_training_and_during_evaluation_then_resume_gives_identical_metrics(tmp_path, reference):
    """The local executor trains a model and evaluates it before the next: kill during the first
    model's evaluation, then during the second model's training."""
    out, cache = tmp_path / "out", tmp_path / "cache"

    run = Run(out, cache)
    run.wait_for("mlp_dropout seed 0: calibration evaluated")  # three more sections of this model to go
    assert run.kill()
    left = on_disk(out, cache)
    assert left["trained"] == 1 and 1 <= left["evaluated"] < SECTIONS // 2 and not left["metrics"], left

    run = Run(out, cache)
    run.wait_for("mlp_dropout seed 0: robustness evaluated")  # its last section: mlp_vib trains now (3 epochs)
    assert run.kill()
    assert "mlp_dropout seed 0: trained model cached" in run.err  # the finished model was not retrained
    assert run.err.count("evaluated in") == SECTIONS // 2 - left["evaluated"]  # finished sections were reused
    assert on_disk(out, cache) == {"trained": 1, "evaluated": SECTIONS // 2, "metrics": False}

    err = complete(out, cache)
    assert err.count("trained model cached") == 1 and "mlp_dropout seed 0: trained in" not in err  # nothing trained again
    assert err.count("mlp_vib seed 0: trained in") == 1 and err.count("evaluated in") == SECTIONS // 2
    no_partial_files(out, cache)
    assert (out / "metrics.csv").read_bytes() == reference


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments(tmp_path, reference, run_seconds, seed):
    """Three kills at random moments spread over one run's life (training, evaluation, writing), each in the resumed
    run after the last, then a final resume. The kills fall within 60% of an uninterrupted run's span (a run alone
    goes faster than the reference, which shared the CPU with a second process); resumed runs skip what is done,
    so the later kills reach evaluation and writing."""
    rng = random.Random(seed)
    for attempt in range(4):  # a run alone may beat a crowded reference by more than 0.6: then a shorter span, anew
        out, cache = tmp_path / f"out{attempt}", tmp_path / f"cache{attempt}"
        landed, left = [], 0.6 * run_seconds / 2**attempt
        for _ in range(3):
            run = Run(out, cache)
            run.wait_for("run smoke-")  # the lock is held: the run has started
            delay = rng.uniform(0.0, left)
            left -= delay
            time.sleep(delay)
            if not run.kill():
                print(f"a kill after {delay:.1f} s came after the run had finished")
                break  # nothing is left to interrupt
            landed.append((round(delay, 1), on_disk(out, cache)))
        print(f"kills within {run_seconds:.1f} s:", landed)
        if landed:
            break
    assert landed
    complete(out, cache)
    no_partial_files(out, cache)
    assert (out / "metrics.csv").read_bytes() == reference


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sigkill_while_results_and_report_are_written(tmp_path, reference, seed):
    """Kills after the last evaluation, while metrics.csv, config, summary, provenance, report and figures are written."""
    rng = random.Random(100 + seed)
    out, cache = tmp_path / "out", tmp_path / "cache"
    run = Run(out, cache)
    run.wait_for("mlp_vib seed 0: robustness evaluated")
    time.sleep(rng.uniform(0.0, 1.5))
    assert run.kill()
    assert "wrote " not in run.err  # killed before the end
    left = on_disk(out, cache)
    print("killed while writing:", left, sorted(p.name for p in out.rglob("*") if p.is_file()))
    assert left == {"trained": 2, "evaluated": SECTIONS, "metrics": left["metrics"]}
    err = complete(out, cache)
    assert "trained in" not in err and "evaluated in" not in err  # only the writing is redone
    no_partial_files(out, cache)
    assert (out / "metrics.csv").read_bytes() == reference


def test_sigint_stops_cleanly_with_a_resume_message(tmp_path):
    run = Run(tmp_path / "out", tmp_path / "cache")
    run.wait_for("run smoke-")
    t0 = time.monotonic()
    run.p.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130
    assert time.monotonic() - t0 < 10
    assert "rerun the same command to resume" in run.err and "Traceback" not in run.err


def test_a_second_run_on_the_same_output_folder_is_refused(first_and_second):
    """The first run finishes unharmed: it is the reference, which every kill test's independent run must reproduce byte for byte."""
    _, second, _ = first_and_second
    assert second.p.returncode == 2 and "Traceback" not in second.err
    assert second.err.strip().splitlines()[-1].startswith("vibbench: error: another vibbench process is writing the output folder ")


@pytest.mark.slow
def test_two_runs_sharing_a_cache_train_each_model_once(tmp_path, reference):
    """Different output folders, one cache: the job locks make the second wait for and reuse the first's models."""
    runs = [Run(tmp_path / f"out{i}", tmp_path / "cache") for i in range(2)]
    assert [r.finish() for r in runs] == [0, 0], [r.err for r in runs]
    assert sum(r.err.count("trained in") for r in runs) == 2  # each model trained by exactly one of them
    no_partial_files(tmp_path)
    for i in range(2):
        assert (tmp_path / f"out{i}" / "metrics.csv").read_bytes() == reference
