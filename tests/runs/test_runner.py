"""`vibbench run` end to end on synthetic data: files, cache hit and miss, bad input."""

import hashlib
import importlib.metadata
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

import vibbench
from vibbench.data import datasets as data
from vibbench.training.checkpoints import save_checkpoint
from vibbench.cli import main
from vibbench.evaluation.sections import enabled_sections
from vibbench.runs.config import PROFILES, make_run_config
from vibbench.reporting.metrics import COLUMNS


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "out", tmp_path / "cache"


def run_cli(*args, command="run", evaluate=False):
    """The local executor: these tests watch the jobs (logs, monkeypatched training) in this process."""
    return main([command, "--profile", "smoke", "--dataset", "synthetic", "--executor", "local", *([] if evaluate else ["--no-eval"]), *args])


def test_smoke_run_writes_results_and_reuses_the_cache(dirs, capsys, monkeypatch):
    out, cache = dirs
    models = ["mlp_deterministic", "mlp_vib"]
    assert run_cli("--models", *models, "--out", str(out), "--cache-dir", str(cache)) == 0
    log = capsys.readouterr().err  # not a terminal: a job counter, a line per epoch, the one wall time
    assert "[1/2] mlp_deterministic" in log and re.search(r"\[2/2\] mlp_vib seed 0 \([\d.]+ s elapsed, ETA [\d.]+ s\)", log), log
    assert re.search(r"mlp_vib seed 0: epoch 1/1, loss [\d.]+, [\d,]+ examples/s, [\d.]+ s elapsed", log), log
    df = pd.read_csv(out / "metrics.csv")
    assert tuple(df.columns) == COLUMNS
    wall = json.loads((out / "provenance.json").read_text())["wall_seconds"]
    assert f"wall time {wall:.0f} s" in log and f"{wall:.0f} s" in (out / "report.md").read_text()
    assert set(df.model) == set(models)
    test_err = df[(df.split == "test") & (df.eval_mode == "predictor") & (df.metric == "error")]
    assert len(test_err) == 2 and test_err.value.between(0, 1).all()
    acc = df[(df.metric == "accuracy")].set_index(["model", "split", "eval_mode"]).value
    err = df[(df.metric == "error")].set_index(["model", "split", "eval_mode"]).value
    pd.testing.assert_series_equal(acc + err, acc * 0 + 1, check_names=False)
    assert set(df[df.model == "mlp_vib"].metric) >= {"rate_bits", "izy_bits"}
    summary = (out / "summary.md").read_text()
    assert "| `mlp_vib` | 0.001 |" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == 1e-4 and config["train"]["adam_betas"] == [0.5, 0.999]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config_hash"] == config["config_hash"] and prov["versions"]["torch"] == torch.__version__.split("+")[0]
    assert prov["seeds"] == [0] and prov["dataset"]["name"] == "synthetic"
    assert_provenance_suffices_to_rerun(out, prov, config, monkeypatch)

    # a second run of the same config trains nothing: any training would fail
    import vibbench.runs.jobs as jobs

    class Trained(Exception):
        pass

    def no_training(*a, **k):
        raise Trained

    monkeypatch.setattr(jobs, "train_model", no_training)
    capsys.readouterr()
    assert run_cli("--models", *models, "--out", str(out), "--cache-dir", str(cache)) == 0
    assert capsys.readouterr().err.count("cached") == 2
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), df)

    # a changed config is a different job: it must train (and so hits the trap)
    # (in another folder: `out` holds the first config's run, which a different config may not replace unasked)
    with pytest.raises(Trained):
        run_cli("--models", "mlp_vib:beta=1e-2", "--out", str(out.parent / "changed"), "--cache-dir", str(cache))


def assert_provenance_suffices_to_rerun(out, prov, config, monkeypatch):
    """Versions, device, git state and data hashes checked against their own sources; options.json reruns the config."""
    for lib in ("torch", "torchvision", "torchattacks", "numpy"):
        assert prov["versions"][lib] == importlib.metadata.version(lib)
    assert prov["device"] == "cpu" and prov["device_name"]
    here = Path(vibbench.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
    if head.returncode == 0:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True)
        assert prov["git"] == {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    # and per model, the code that trained it (a cached model may come from an earlier commit)
    assert set(prov["trained_by"]) == set(prov["job_hashes"])
    for by in prov["trained_by"].values():
        assert by["git"] == prov["git"] and by["torch"] == prov["versions"]["torch"] and by["vibbench"] == prov["versions"]["vibbench"]
    arrays = data._synthetic_arrays()
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert prov["dataset"]["sha256"][key] == hashlib.sha256(arrays[key].tobytes()).hexdigest()
    options = json.loads((out / "options.json").read_text())
    assert options == prov["options"] and options["train"]["lr"] == 1e-4
    import vibbench.runs.runner as runner

    rerun = []
    with monkeypatch.context() as m:
        m.setattr(runner, "run", lambda cfg, **kw: rerun.append(cfg) or out)
        assert main(["run", "--config", str(out / "options.json")]) == 0
    assert rerun[0].config_hash == config["config_hash"]


def test_the_run_cache_defaults_to_the_environment_then_the_user_cache(monkeypatch, tmp_path):
    from vibbench.core.paths import default_cache_dir

    monkeypatch.setenv("VIBBENCH_CACHE_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "runs"
    monkeypatch.delenv("VIBBENCH_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "vibbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vibbench"


def test_changed_config_changes_the_hash():
    a = make_run_config("smoke", dataset="synthetic", models=["mlp_vib"], device="cpu")
    b = make_run_config("smoke", dataset="synthetic", models=["mlp_vib"], device="cpu", epochs=2)
    c = make_run_config("smoke", dataset="synthetic", models=["mlp_vib:beta=1e-2"], device="cpu")
    spec_a, spec_c = a.models[0], c.models[0]
    assert a.config_hash != b.config_hash != c.config_hash
    assert a.job_hash(spec_a, 0) != b.job_hash(b.models[0], 0)
    assert a.job_hash(spec_a, 0) != c.job_hash(spec_c, 0)
    assert a.job_hash(spec_a, 0) != a.job_hash(spec_a, 1)
    assert a.job_hash(spec_a, 0) == make_run_config("smoke", dataset="synthetic", models=["mlp_*"], device="cpu").job_hash(spec_a, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "mlp_vbi"], "unknown model or pattern 'mlp_vbi'. Did you mean mlp_vib"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--profile", "fast"], "unknown profile 'fast'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--models", "mlp_vib:beta=-1"], "beta must be >= 0"),
        (["--models", "mlp_vib:beta=abc"], "bad value 'abc' for beta"),
        (["--models", "mlp_dropout:beta=1e-3"], "beta only applies to VIB"),
    ],
)
def test_bad_input_gets_one_clear_message_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--profile", "smoke", "--dataset", "synthetic", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    # later options override the defaults above
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()


def test_checkpoint_that_does_not_match_its_config_is_refused(dirs, capsys):
    out, cache = dirs
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache)) == 0
    (model_file,) = cache.glob("jobs/*/model.pt")
    save_checkpoint(model_file, {"weights": torch.zeros(1)}, config_hash="some-other-config")
    capsys.readouterr()
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache)) == 2
    assert "does not match its config" in capsys.readouterr().err
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache)) == 2
    assert "unreadable" in capsys.readouterr().err
    # --retrain replaces the bad entry
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache), "--retrain") == 0


def test_unwritable_output_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_cli("--out", str(blocker / "sub"), "--cache-dir", str(tmp_path / "c")) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_list_prints_the_registry(capsys):
    assert main(["list", "mlp_*"]) == 0
    out = capsys.readouterr().out
    assert "mlp_vib" in out and "beta=0.001" in out and "conv_vib" not in out


def test_smoke_run_with_evaluation_then_eval_and_report_from_the_cache(dirs, capsys, monkeypatch):
    out, cache = dirs
    models = ["mlp_deterministic", "mlp_vib"]
    assert run_cli("--models", *models, "--out", str(out), "--cache-dir", str(cache), evaluate=True) == 0
    df = pd.read_csv(out / "metrics.csv")
    sections = {
        "robustness": df.attack.eq("worst_case"),
        "calibration": df.calibration.eq("temperature"),
        "ood": df.ood.eq("noise"),
        "shift": df.corruption.notna(),
    }
    for name, rows in sections.items():
        assert rows.any(), name
    assert set(df[df.metric.str.startswith("flag_")].model) == set(models)
    assert {"mean", "eot"} <= set(df[df.model == "mlp_vib"].path.dropna())
    report = (out / "report.md").read_text()
    assert "figures/robust_accuracy.png" in report and (out / "figures" / "robust_accuracy.png").stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["eval"]["attacks"]["subset"] == 30 and "AutoAttack" in config["eval"]["autoattack_label"]
    # the evaluation set is recorded: its seed, sizes and indices, and every robustness row's n is one of its sizes
    from vibbench.evaluation.subsets import evaluation_indices

    chosen = json.loads((out / "evaluation_set.json").read_text())
    assert chosen["seed"] == config["eval"]["subset_seed"] and chosen["sizes"]["robustness"] == 30
    assert chosen["indices"] == evaluation_indices(chosen["test_size"], max(chosen["sizes"].values()), chosen["seed"]).tolist()
    assert set(df[df.attack.notna() & (df.metric == "robust_accuracy")].n) <= {30, chosen["sizes"]["expensive_attacks"]}
    # beta is a VIB's: empty for the other methods, never a 0 that reads like a VIB at beta 0
    assert df[df.method != "vib"].beta.isna().all() and (df[df.method == "vib"].beta > 0).all()

    # `vibbench eval` trains nothing and evaluates nothing again: every section is cached
    import vibbench.runs.jobs as jobs

    monkeypatch.setattr(jobs, "train_model", lambda *a, **k: pytest.fail("eval trained a model"))
    from vibbench.evaluation.sections import SECTIONS

    for name in SECTIONS:
        monkeypatch.setitem(SECTIONS, name, lambda *a, name=name, **k: pytest.fail(f"the cached {name} section ran again"))
    assert run_cli("--models", *models, "--out", str(out), "--cache-dir", str(cache), command="eval", evaluate=True) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), df)

    # the report is rebuilt from metrics.csv alone
    (out / "report.md").unlink()
    for f in ("config.json", "provenance.json"):
        (out / f).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().count("## ") >= 6


def test_eval_without_trained_models_says_what_to_do(dirs, capsys):
    out, cache = dirs
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache), command="eval") == 2
    assert "run `vibbench run`" in capsys.readouterr().err


def test_report_of_a_folder_without_metrics(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err


def test_same_config_and_seed_give_bit_identical_metrics(tmp_path):
    """Two independent smoke runs (separate caches: everything trained and evaluated twice)."""
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        assert run_cli("--models", "mlp_dropout", "mlp_vib", "--out", str(out), "--cache-dir", str(tmp_path / f"cache{i}"), evaluate=True) == 0
        outs.append((out / "metrics.csv").read_bytes())
    assert outs[0] == outs[1]
    assert b"seconds" not in outs[0]  # wall times live in timing.csv
    timing = pd.read_csv(tmp_path / "out0" / "timing.csv", keep_default_na=False)
    assert (timing.metric == "examples_per_second").sum() == 2
    # every evaluation section's wall time, per model, and the attacks' per attack and path
    sections = timing[(timing.metric == "seconds") & (timing.split == "test") & (timing.attack == "")]
    assert sorted(sections.groupby("label").eval_mode.apply(sorted).iloc[0]) == sorted(enabled_sections(PROFILES["smoke"].eval))
    assert sections.groupby("label").size().tolist() == [len(enabled_sections(PROFILES["smoke"].eval))] * 2
    attacks = timing[(timing.eval_mode == "robustness") & (timing.attack != "")]
    assert set(attacks.attack) >= {"checks", "pgd"} and set(attacks.path[attacks.label == "mlp_vib"]) == {"mean", "eot"}
    report = (tmp_path / "out0" / "report.md").read_text()
    assert "**Evaluation time**" in report and "**Attack time**" in report


def test_a_diverging_model_stops_the_run_with_a_message_and_no_nan_is_written(dirs, capsys):
    """A real divergence: beta = 1e37 makes beta * KL overflow float32 at the first step."""
    out, cache = dirs
    for attempt in range(2):  # the same message again on a rerun: nothing half-finished is reused
        assert run_cli("--models", "mlp_deterministic", "mlp_vib:beta=1e37", "--out", str(out), "--cache-dir", str(cache)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            "vibbench: error: training of mlp_vib:beta=1e+37 seed 0 diverged: the loss became NaN or inf at epoch 1, step 1 of 10. "
            "Lower the learning rate or beta; no result was written for this model."
        )
        assert not (out / "metrics.csv").exists() and len(list(cache.glob("jobs/*/result.json"))) == 1  # the deterministic model's


def test_non_finite_metrics_are_refused_even_when_the_loss_stayed_finite(dirs, capsys, monkeypatch):
    import vibbench.runs.jobs as jobs
    from vibbench.training.loop import TrainResult

    def broken_training(model, *args, **kwargs):
        with torch.no_grad():
            model.decoder.weight.fill_(float("nan"))
        return TrainResult(history=[{"epoch": 1, "loss": 1.0, "ce": 1.0, "kl": 0.0, "lr": 1e-4, "seconds": 1.0, "examples_per_second": 1.0}])

    monkeypatch.setattr(jobs, "train_model", broken_training)
    out, cache = dirs
    assert run_cli("--models", "mlp_vib", "--out", str(out), "--cache-dir", str(cache)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("vibbench: error: mlp_vib seed 0 diverged: non-finite val predictor nll") and "no result was written" in last
    assert not list(cache.glob("jobs/*/result.json")) and not list(cache.glob("jobs/*/model.pt"))


@pytest.mark.parametrize(
    "device, capability, expected",
    [("cuda", "AVX512", "population"), ("cpu", "AVX2", "population"), ("cpu", "AVX512", "single"), ("cpu", "DEFAULT", "single")],
)
def test_trainer_auto_picks_populations_where_the_bench_measured_them_faster(device, capability, expected, monkeypatch):
    from vibbench.runs import jobs

    monkeypatch.setattr(jobs, "cpu_capability", lambda: capability)
    assert jobs.resolve_trainer("auto", device) == expected
    assert jobs.resolve_trainer("single", device) == "single" and jobs.resolve_trainer("population", "cpu") == "population"
