"""The smoke sweep in worker processes of this machine (`--executor processes`, and `auto`'s choice): the same
metrics.csv as the local executor on as many torch threads, byte for byte, also after a worker is killed mid-way
and the run resumed; a failing job is reported and the others kept."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vibbench.cli import main
from vibbench.core.errors import VibbenchError
from vibbench.runs import executors
from vibbench.runs.cache import job_dir
from vibbench.runs.config import make_run_config
from vibbench.runs.executors import LocalExecutor, ProcessExecutor, make_executor
from vibbench.runs.jobs import resolve_trainer, training_groups

SMOKE = ["run", "--profile", "smoke", "--dataset", "synthetic"]
WORKERS = 2  # each on one torch thread on a 2-core machine; set explicitly so that the test means the same anywhere


def sweep(base: Path, *extra) -> tuple[int, Path]:
    out = base / "out"
    return main([*SMOKE, "--out", str(out), "--cache-dir", str(base / "cache"), *extra]), out


def in_processes(base: Path, *extra) -> tuple[int, Path]:
    return sweep(base, "--executor", "processes", "--workers", str(WORKERS), *extra)


def smoke_units() -> int:
    cfg = make_run_config("smoke", dataset="synthetic", device="cpu")
    return len(training_groups([(spec, seed) for seed in cfg.seeds for spec in cfg.models], resolve_trainer("auto", "cpu")))


def test_smoke_sweep_in_worker_processes_gives_the_local_metrics(tmp_path, local_metrics, capfd):
    code, out = in_processes(tmp_path)
    err = capfd.readouterr().err
    assert code == 0, err
    assert (out / "metrics.csv").read_bytes() == local_metrics
    units = smoke_units()
    assert f"processes: {units} job(s) on {WORKERS} worker process(es), 1 torch thread(s) each" in err
    assert f"processes: {units}/{units} jobs done, 0 failed" in err
    prov = (out / "provenance.json").read_text()
    assert '"name": "processes"' in prov and '"torch_threads_per_job": 1' in prov

    # a rerun starts no worker: every job is finished in the cache
    assert in_processes(tmp_path)[0] == 0
    assert "worker process" not in capfd.readouterr().err
    assert (out / "metrics.csv").read_bytes() == local_metrics


def test_auto_picks_processes_for_several_jobs_on_several_cores(monkeypatch):
    monkeypatch.setattr(executors, "available_cpus", lambda: 2)
    chosen = make_executor("auto", device="cpu", jobs=10)
    assert isinstance(chosen, ProcessExecutor) and (chosen.workers, chosen.threads) == (2, 1)
    # the choice depends on the command, not on the cache: one job left of ten still runs in a worker
    assert isinstance(make_executor("auto", device="cpu", jobs=2, workers=2), ProcessExecutor)
    assert isinstance(make_executor("auto", device="cpu", jobs=1), LocalExecutor)  # one job: this process, every core
    assert isinstance(make_executor("auto", device="cuda", jobs=10), LocalExecutor)  # one process keeps the GPU busy
    assert isinstance(make_executor("auto", device="cpu", jobs=10, workers=1), LocalExecutor)
    monkeypatch.setattr(executors, "available_cpus", lambda: 1)
    assert isinstance(make_executor("auto", device="cpu", jobs=10), LocalExecutor)
    monkeypatch.setattr(executors, "available_cpus", lambda: 16)
    chosen = make_executor("auto", device="cpu", jobs=10)
    assert (chosen.workers, chosen.threads) == (8, 2)  # at most 8 workers, the CPUs shared out as their threads
    assert make_executor("processes", workers=3).describe() == {"name": "processes", "workers": 3, "torch_threads_per_job": 5}


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("local", {"workers": 2}, "--workers only applies with --executor processes or auto"),
        ("ray", {"workers": 2}, "--workers only applies with --executor processes or auto"),
        ("processes", {"device": "cuda"}, "--executor processes runs on the CPU: use --executor local with --device cuda"),
        ("processes", {"address": "auto"}, "--ray-address only applies with --executor ray"),
        ("auto", {"workers": 0}, "--workers must be a positive integer or null, got 0"),
    ],
)
def test_bad_process_options_get_one_clear_message(name, kwargs, message):
    with pytest.raises(VibbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_executor(name, **kwargs)


def test_workers_on_the_command_line_is_refused_with_the_local_executor(tmp_path, capfd):
    out = tmp_path / "out"
    assert main([*SMOKE, "--out", str(out), "--executor", "local", "--workers", "2"]) == 2
    err = capfd.readouterr().err
    assert err == "vibbench: error: --workers only applies with --executor processes or auto\n"
    assert not out.exists()


def test_a_worker_killed_mid_job_fails_the_run_in_one_line_and_a_rerun_resumes_to_the_same_metrics(tmp_path, local_metrics, capfd, mid_job):
    with mid_job.killing(tmp_path / "cache") as killed:
        code, out = in_processes(tmp_path)
    err = capfd.readouterr().err
    assert killed, "no worker was found mid-job"
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("vibbench: error: ") and "its worker process died (killed, or out of memory)" in line
    assert "rerun the same command to resume" in line
    assert not (out / "metrics.csv").exists()

    code, out = in_processes(tmp_path)
    err = capfd.readouterr().err
    assert code == 0, err
    assert "calibration cached" in err or "evaluated" in err
    assert (out / "metrics.csv").read_bytes() == local_metrics


def test_a_failing_job_is_reported_the_others_are_kept_and_a_rerun_resumes(tmp_path, capfd):
    models = ["mlp_vib", "mlp_dropout"]
    cfg = make_run_config("smoke", dataset="synthetic", models=models, device="cpu", evaluate=False)
    broken = job_dir(tmp_path / "cache", cfg.job_hash(cfg.models[0], 0)) / "train_state.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")

    code, out = in_processes(tmp_path, "--models", *models, "--no-eval")
    err = capfd.readouterr().err
    assert code == 2
    assert "vibbench: error: 1 of 2 job(s) failed: mlp_vib seed 0: VibbenchError: checkpoint" in err
    assert "rerun the same command to resume (only the failed jobs run again)" in err
    assert not (out / "metrics.csv").exists()
    assert (job_dir(tmp_path / "cache", cfg.job_hash(cfg.models[1], 0)) / "result.json").exists()

    broken.unlink()
    code, out = in_processes(tmp_path, "--models", *models, "--no-eval")
    err = capfd.readouterr().err
    assert code == 0, err
    assert "processes: 1 job(s) on 1 worker process(es), 1 torch thread(s) each" in err
    assert "mlp_dropout seed 0: trained model cached" in err
    assert (out / "metrics.csv").exists()


def test_a_plugin_model_trains_in_the_workers_beside_a_builtin(tmp_path, tiny_plugin, capfd):
    """The workers import the run's recorded plugin (a FILE.py) before resolving its models, as Ray's do."""
    code, out = in_processes(tmp_path, "--plugin", str(tiny_plugin), "--models", "mlp_deterministic", "tiny_vib", "--no-eval")
    err = capfd.readouterr().err
    assert code == 0, err
    assert "processes: 2/2 jobs done, 0 failed" in err
    assert "tiny_vib" in (out / "metrics.csv").read_text()


def test_an_interrupted_run_stops_its_workers_at_once(tmp_path, monkeypatch):
    """Ctrl-C (here: raised once the first job is done) ends the running workers too: nothing goes on computing
    beside the next command, and the cache keeps what was finished."""
    import multiprocessing

    real_log = executors.log

    def log(text):
        real_log(text)
        if "jobs done" in text:
            raise KeyboardInterrupt

    monkeypatch.setattr(executors, "log", log)
    assert in_processes(tmp_path, "--models", "mlp_vib", "mlp_dropout", "mlp_deterministic", "--no-eval")[0] == 130
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
    assert len(list((tmp_path / "cache" / "jobs").glob("*/result.json"))) >= 1


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_killed_run_leaves_no_worker_behind_and_a_rerun_resumes_to_the_same_metrics(tmp_path, local_metrics, mid_job):
    """SIGKILL to the run's own process (no chance to stop its workers): the workers die with it instead of computing
    on while holding their jobs' locks, and the same command resumes to the same bytes."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "vibbench", *SMOKE, "--out", str(out), "--cache-dir", str(cache), "--executor", "processes", "--workers", str(WORKERS)]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    deadline = time.monotonic() + 300
    while worker is None and run.poll() is None and time.monotonic() < deadline:
        worker = mid_job.find(cache, {run.pid})
        time.sleep(0.02)
    assert worker is not None, "no worker was found mid-job"
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(worker), f"worker {worker} outlived the killed run"

    code, out = in_processes(tmp_path)
    assert code == 0
    assert (out / "metrics.csv").read_bytes() == local_metrics
