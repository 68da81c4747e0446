"""The smoke sweep on a real local Ray instance (2 CPUs): the same metrics.csv as the local executor,
byte for byte, also when a worker is killed mid-way; a failing job is reported and the others kept.
Skipped when Ray is not installed (`pip install 'vibbench[ray]'`)."""

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from vibbench.cli import main  # noqa: E402
from vibbench.runs.config import make_run_config  # noqa: E402
from vibbench.runs.cache import job_dir  # noqa: E402
from vibbench.runs.jobs import resolve_trainer, training_groups  # noqa: E402

SMOKE = ["run", "--profile", "smoke", "--dataset", "synthetic"]
THREADS = 1
"""torch threads of a job: each Ray task declares (and uses) this many CPUs, as many as the local reference
(`local_metrics` in conftest.py) runs on, since CPU kernels' sums depend on the thread count in their last bits."""


def sweep(base: Path, *extra) -> tuple[int, Path]:
    out = base / "out"
    return main([*SMOKE, "--out", str(out), "--cache-dir", str(base / "cache"), *extra]), out


def on_ray(base: Path, *extra) -> tuple[int, Path]:
    return sweep(base, "--executor", "ray", "--ray-cpus-per-job", str(THREADS), *extra)


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs, started by this process: `--executor ray` uses its connection."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_smoke_sweep_on_ray_gives_the_local_metrics(tmp_path, local_metrics, ray_instance, capsys):
    code, out = on_ray(tmp_path)
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / "metrics.csv").read_bytes() == local_metrics
    cfg = make_run_config("smoke", dataset="synthetic", device="cpu")
    units = len(training_groups([(spec, seed) for seed in cfg.seeds for spec in cfg.models], resolve_trainer("auto", "cpu")))
    assert units == 5 or resolve_trainer("auto", "cpu") == "population"  # 5 models, alone or as populations (auto, on AVX2)
    assert f"ray: {units} job(s) submitted" in err and f"ray: {units}/{units} jobs done, 0 running, 0 failed" in err
    prov = (out / "provenance.json").read_text()
    assert '"name": "ray"' in prov and f'"ray_version": "{ray.__version__}"' in prov

    # a rerun submits nothing: every job is finished in the cache
    assert on_ray(tmp_path)[0] == 0
    assert "submitted" not in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == local_metrics


def test_a_worker_killed_mid_job_is_retried_and_the_metrics_still_match(tmp_path, local_metrics, ray_instance, capsys, mid_job):
    with mid_job.killing(tmp_path / "cache") as killed:
        code, out = on_ray(tmp_path)
    err = capsys.readouterr().err
    assert code == 0, err
    assert killed, "no worker was found mid-job"
    assert "restarted (attempt 2 of 3), resuming from the cache" in err
    assert (out / "metrics.csv").read_bytes() == local_metrics


def test_a_failing_job_is_reported_the_others_are_kept_and_a_rerun_resumes(tmp_path, ray_instance, capsys):
    models = ["mlp_vib", "mlp_dropout"]
    cfg = make_run_config("smoke", dataset="synthetic", models=models, device="cpu", evaluate=False)
    broken = job_dir(tmp_path / "cache", cfg.job_hash(cfg.models[0], 0)) / "train_state.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")

    code, out = on_ray(tmp_path, "--models", *models, "--no-eval")
    err = capsys.readouterr().err
    assert code == 2
    assert "vibbench: error: 1 of 2 job(s) failed on Ray: mlp_vib seed 0: VibbenchError: checkpoint" in err
    assert "rerun the same command to resume" in err
    assert "restarted" not in err  # a VibbenchError is the same on every try: not retried
    assert not (out / "metrics.csv").exists()
    assert (job_dir(tmp_path / "cache", cfg.job_hash(cfg.models[1], 0)) / "result.json").exists()

    broken.unlink()
    code, out = on_ray(tmp_path, "--models", *models, "--no-eval")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ray: 1 job(s) submitted" in err and "mlp_dropout seed 0: trained model cached" in err
    assert (out / "metrics.csv").exists()


def test_a_plugin_model_trains_on_ray_workers_beside_a_builtin(tmp_path, tiny_plugin, ray_instance, capsys):
    """The workers import the run's recorded plugin (a FILE.py on a path they reach) before resolving its models."""
    code, out = on_ray(tmp_path, "--plugin", str(tiny_plugin), "--models", "mlp_deterministic", "tiny_vib", "--no-eval")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ray: 2/2 jobs done, 0 running, 0 failed" in err
    cfg = make_run_config("smoke", models=["tiny_vib"], dataset="synthetic", device="cpu", evaluate=False, plugins=[str(tiny_plugin)])
    assert (job_dir(tmp_path / "cache", cfg.job_hash(cfg.models[0], 0)) / "model.pt").is_file()
    assert "tiny_vib" in (out / "metrics.csv").read_text()
