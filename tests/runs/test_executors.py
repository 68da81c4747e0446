"""`--executor` and the Ray options: validation with one clear message each, and no Ray needed for the local executor."""

import subprocess
import sys

import pytest

from vibbench.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "dask"], "unknown executor 'dask'. Known: auto, local, processes, ray."),
        (["--ray-address", "auto"], "--ray-address only applies with --executor ray"),
        (["--executor", "local", "--ray-max-retries", "1"], "--ray-max-retries only applies with --executor ray"),
        (["--executor", "ray", "--ray-address", " "], "--ray-address must not be empty"),
        (["--executor", "ray", "--ray-gpus-per-job", "0.5"], "--ray-gpus-per-job only applies with --device cuda"),
        (["--executor", "ray", "--device", "cuda", "--ray-gpus-per-job", "1.5"], "--ray-gpus-per-job must be in (0, 1]"),
        (["--executor", "ray", "--device", "cuda", "--ray-gpus-per-job", "nan"], "--ray-gpus-per-job must be in (0, 1]"),
        (["--executor", "ray", "--ray-max-retries", "11"], "--ray-max-retries must be an integer from 0 to 10, got 11"),
        (["--executor", "ray", "--ray-max-retries", "-1"], "--ray-max-retries must be an integer from 0 to 10, got -1"),
    ],
)
def test_bad_executor_options_get_one_clear_message(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--dataset", "synthetic", "--out", str(out), "--cache-dir", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vibbench: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_non_numeric_ray_options_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--executor", "ray", "--ray-cpus-per-job", "0"])
    assert info.value.code == 2 and "argument --ray-cpus-per-job: the value must be a positive integer, got 0" in capsys.readouterr().err


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["run", "--profile", "smoke", "--dataset", "synthetic", "--out", str(tmp_path / "out"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray, which is not installed: pip install 'vibbench[ray]'" in err and "Traceback" not in err


def test_the_local_executor_does_not_import_ray():
    code = "import sys; from vibbench.cli import build_parser; from vibbench.runs.executors import make_executor; make_executor('local'); assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
