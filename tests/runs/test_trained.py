"""A run's trained models back from the cache (vibbench.load_model, `vibbench export`) and `vibbench show`."""

import json
import shutil
import sys

import pandas as pd
import pytest
import torch

import vibbench
from vibbench.cli import main
from vibbench.data.datasets import load_dataset
from vibbench.evaluation.inference import predict
from vibbench.runs.trained import EXPORT_FORMAT

MODELS = ["mlp_vib", "mlp_dropout", "mlp_vib:beta=1e-2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke run on synthetic data: (its folder, its cache)."""
    base = tmp_path_factory.mktemp("trained")
    out, cache = base / "out", base / "cache"
    args = ["run", "--profile", "smoke", "--dataset", "synthetic", "--no-eval", "--models", *MODELS]
    assert main([*args, "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out, cache


def recorded(out, label, metric="accuracy", mode="predictor"):
    df = pd.read_csv(out / "metrics.csv")
    rows = df[(df.label == label) & (df.split == "test") & (df.eval_mode == mode) & (df.metric == metric)]
    return rows.value.item()


@pytest.mark.parametrize("label", MODELS[:2] + ["mlp_vib:beta=0.01"])
def test_load_model_reproduces_the_runs_clean_test_accuracy(run, label):
    out, _ = run  # the cache folder comes from provenance.json
    model = vibbench.load_model(out, label, seed=0)
    assert isinstance(model, vibbench.Classifier) and not model.training
    config = json.loads((out / "config.json").read_text())
    n, batch = config["train"]["max_eval_examples"], config["train"]["eval_batch_size"]
    test = load_dataset("synthetic").test
    # the predictor's noise under the run's seed, in the run's chunks, as evaluation/clean.py measures it
    correct = int((predict(model, test.images[:n], batch_size=batch, seed=0) == test.labels[:n]).sum())
    assert correct / n == recorded(out, label)
    model.mean_mode = True
    correct = int((predict(model, test.images[:n], batch_size=batch, seed=0) == test.labels[:n]).sum())
    assert correct / n == recorded(out, label, mode="mean")


def test_load_model_takes_any_spelling_of_the_runs_model_and_a_cache_folder(run, tmp_path):
    out, cache = run
    a = vibbench.load_model(out, "mlp_vib:beta=1e-2")
    b = vibbench.load_model(str(out), "mlp_vib:beta=0.01", cache_dir=cache)
    assert a.method.beta == 1e-2 and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "model, seed, message",
    [
        ("mlp_vibb", 0, r"unknown model of run smoke-synthetic-\w+ 'mlp_vibb'. Did you mean mlp_vib.*Known: mlp_vib, mlp_dropout, mlp_vib:beta=0.01"),
        ("mlp_*", 0, "unknown model of run"),
        ("mlp_deterministic", 0, "unknown model of run"),
        ("mlp_vib", 1, "trained seed 0, not seed 1; `vibbench run --seeds N`"),
        ("mlp_vib", True, "not seed True"),
    ],
)
def test_unknown_models_and_seeds_say_what_the_run_has(run, model, seed, message):
    with pytest.raises(vibbench.VibbenchError, match=message):
        vibbench.load_model(run[0], model, seed=seed)


def test_a_model_missing_from_the_cache_says_how_to_get_it(run, tmp_path):
    out, _ = run
    with pytest.raises(vibbench.VibbenchError) as info:
        vibbench.load_model(out, "mlp_vib", cache_dir=tmp_path / "elsewhere")
    text = str(info.value)
    assert "mlp_vib seed 0 of run smoke-synthetic-" in text and f"is not in the cache {tmp_path / 'elsewhere'}" in text
    assert "that folder does not exist" in text
    assert f"run `vibbench run --config {out / 'options.json'} --out {out} --cache-dir {tmp_path / 'elsewhere'}` again to retrain it" in text


def test_a_damaged_cache_entry_is_refused(run, tmp_path):
    """load_model reads the cache as the runner does: the checkpoint's SHA-256 is checked."""
    out, cache = run
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    for path in copy.glob("jobs/*/model.pt"):
        data = bytearray(path.read_bytes())
        data[-200] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(vibbench.VibbenchError, match="unreadable or unsafe|fails its SHA-256 check"):
        vibbench.load_model(out, "mlp_vib", cache_dir=copy)


def test_a_folder_that_is_not_a_run(tmp_path, run):
    with pytest.raises(vibbench.VibbenchError, match="has no config.json and options.json: it is not the folder of a finished"):
        vibbench.load_model(tmp_path, "mlp_vib")
    edited = tmp_path / "edited"
    shutil.copytree(run[0], edited)
    options = json.loads((edited / "options.json").read_text())
    (edited / "options.json").write_text(json.dumps(options | {"epochs": 2}))
    with pytest.raises(vibbench.VibbenchError, match="rebuilds config .*, not the run's"):
        vibbench.load_model(edited, "mlp_vib")


def test_export_loads_with_weights_only_and_rebuilds_the_same_model(run, tmp_path, capsys):
    out, _ = run
    path = tmp_path / "models" / "vib.pt"
    assert main(["export", str(out), "mlp_vib:beta=0.01", "--seed", "0", "-o", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == EXPORT_FORMAT and doc["label"] == "mlp_vib:beta=0.01" and doc["seed"] == 0
    assert doc["spec"] == {
        "name": "mlp_vib", "beta": 0.01, "dropout": 0.0, "label_smoothing": 0.0, "confidence_penalty": 0.0,
        "num_classes": 10, "latent_dim": 256, "eval_samples": 12, "train_samples": 1,
    }
    assert doc["vibbench_version"] == vibbench.__version__ and doc["run_id"] == json.loads((out / "config.json").read_text())["run_id"]
    rebuilt = vibbench.create_model(**doc["spec"])
    rebuilt.load_state_dict(doc["state_dict"])
    rebuilt.eval()
    loaded = vibbench.load_model(out, "mlp_vib:beta=0.01")
    x = torch.rand(64, 1, 28, 28)
    for mean_mode in (False, True):
        rebuilt.mean_mode = loaded.mean_mode = mean_mode
        torch.manual_seed(3)
        a = rebuilt(x)
        torch.manual_seed(3)
        b = loaded(x)
        assert torch.equal(a, b)


def test_export_of_a_dropout_model_and_of_a_missing_one(run, tmp_path, capsys):
    out, _ = run
    path = tmp_path / "dropout.pt"
    assert main(["export", str(out), "mlp_dropout", "-o", str(path)]) == 0
    doc = torch.load(path, weights_only=True)
    assert doc["spec"]["name"] == "mlp_dropout" and doc["spec"]["dropout"] == 0.5
    rebuilt = vibbench.create_model(**doc["spec"])
    rebuilt.load_state_dict(doc["state_dict"])
    x = torch.rand(8, 784)
    assert torch.equal(rebuilt.eval()(x), vibbench.load_model(out, "mlp_dropout")(x))
    capsys.readouterr()
    assert main(["export", str(out), "mlp_vib", "-o", str(tmp_path / "x.pt"), "--cache-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vibbench: error: mlp_vib seed 0 of run") and "again to retrain it" in err and not (tmp_path / "x.pt").exists()


def test_a_plugin_model_loads_and_exports_with_its_plugin(tiny_plugin, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--plugin", str(tiny_plugin), "--profile", "smoke", "--dataset", "synthetic", "--no-eval"]
    assert main([*args, "--models", "tiny_vib", "--out", str(out), "--cache-dir", str(cache)]) == 0
    model = vibbench.load_model(out, "tiny_vib")
    assert model.backbone_name == "tiny"
    path = tmp_path / "tiny.pt"
    assert main(["export", str(out), "tiny_vib", "-o", str(path), "--plugin", str(tiny_plugin)]) == 0
    assert torch.load(path, weights_only=True)["plugins"] == [str(tiny_plugin)]


def forget_plugins():
    """The registry as in a new process: without the tiny plugin's backbone, method and module."""
    from vibbench.models.backbones import BACKBONES, CODES, FACTORIES
    from vibbench.models.methods import METHODS
    from vibbench.runs.config import _resolve

    for table, name in ((BACKBONES, "tiny"), (CODES, "tiny"), (FACTORIES, "tiny"), (METHODS, "vib_smooth")):
        del table[name]
    for module in [m for m in sys.modules if m.startswith("vibbench_plugin_")]:
        del sys.modules[module]
    _resolve.cache_clear()


def test_a_plugin_run_without_its_plugin_names_it(tiny_plugin, tmp_path):
    from vibbench.runs.config import make_run_config
    from vibbench.runs.runner import run

    out = run(make_run_config("smoke", models=["tiny_deterministic"], dataset="synthetic", device="cpu", evaluate=False,
                              plugins=[str(tiny_plugin)]), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    forget_plugins()
    with pytest.raises(vibbench.VibbenchError, match=f"used the plugin\\(s\\) {tiny_plugin}: load them first \\(--plugin {tiny_plugin}; plugins="):
        vibbench.load_model(out, "tiny_deterministic")
    assert vibbench.load_model(out, "tiny_deterministic", plugins=[str(tiny_plugin)]).backbone_name == "tiny"
    # the plugin's code changed since the run: its model is not the one the run trained
    tiny_plugin.write_text(tiny_plugin.read_text() + "\n# edited\n")
    forget_plugins()
    with pytest.raises(vibbench.VibbenchError, match="the model\\(s\\) tiny_deterministic differ from the ones it trained"):
        vibbench.load_model(out, "tiny_deterministic", plugins=[str(tiny_plugin)])


def test_show_prints_the_summary_the_run_id_the_wall_time_and_the_report(run, capsys):
    out, cache = run
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert text.startswith(f"run:       {config['run_id']}\n")
    assert "config:    profile smoke, dataset synthetic, 3 model(s), 1 seed(s), device cpu" in text
    assert "wall time: " in text and prov["created"] in text
    assert f"report:    {out / 'report.md'}" in text and f"cache:     {cache.absolute()}" in text
    assert (out / "summary.md").read_text() in text


def test_show_without_a_summary_makes_it_from_metrics(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    for name in ("summary.md", "provenance.json", "report.md"):
        (copy / name).unlink()
    assert main(["show", str(copy)]) == 0
    text = capsys.readouterr().out
    assert "wall time: not recorded" in text and f"`vibbench report {copy}` writes it" in text
    assert "| `mlp_vib` | 0.001 |" in text


def test_show_of_a_folder_without_metrics_is_one_line(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"vibbench: error: {tmp_path} has no metrics.csv: it is not the folder of a finished `vibbench run`\n"
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_duration():
    from vibbench.runs.folder import duration

    assert [duration(s) for s in (1.234, 54.4, 723, 7500)] == ["1.2 s", "54 s", "12 min 3 s", "2 h 05 min"]
