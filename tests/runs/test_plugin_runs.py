"""A plugin's model under the run's frozen settings: the built-in models' batches, schedule, EMA and noise rule,
in this process and in another one (as an executor's worker runs it)."""

import dataclasses
import json
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import torch

import vibbench.training.loop as loop
import vibbench.training.single as single
from vibbench.cli import main
from vibbench.core.errors import VibbenchError
from vibbench.runs.config import make_run_config
from vibbench.runs.executors import _check_plugins_recorded
from vibbench.training.noise import noise_seed


def test_a_plugin_backbone_trains_beside_a_builtin_on_the_same_batches_schedule_and_ema(tiny_plugin, tmp_path, monkeypatch):
    seen: dict[str, dict] = {}
    current: list[str] = []
    real_epoch, real_order, real_ema, real_noise = loop._run_epoch, loop.batch_order, loop.ema_update, single.ModelNoise

    def run_epoch(state, cfg, epoch, images, step, labels, progress):
        current[:] = labels
        record = seen.setdefault(labels[0], {"cfg": [], "images": [], "lr": [], "batches": [], "ema": []})
        record["cfg"].append(cfg)
        record["images"].append(images)
        record["lr"].append([g["lr"] for g in state.optimizer.param_groups])
        return real_epoch(state, cfg, epoch, images, step, labels, progress)

    def batch_order(num_examples, batch_size, generator):
        batches = real_order(num_examples, batch_size, generator)
        seen[current[0]]["batches"].append(torch.stack(batches))
        return batches

    def ema_update(ema, params, step, decay):
        seen[current[0]]["ema"].append((step, decay))
        return real_ema(ema, params, step, decay)

    noise_keys = {}

    def model_noise(model, seed, key, device):
        noise_keys[model.name] = (seed, key)
        return real_noise(model, seed, key, device)

    monkeypatch.setattr(loop, "_run_epoch", run_epoch)
    monkeypatch.setattr(loop, "batch_order", batch_order)
    monkeypatch.setattr(loop, "ema_update", ema_update)
    monkeypatch.setattr(single, "ModelNoise", model_noise)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", "--plugin", str(tiny_plugin), "--profile", "smoke", "--dataset", "synthetic", "--no-eval", "--epochs", "3", "--executor", "local"]  # watched in this process
    assert main([*args, "--models", "mlp_vib", "tiny_vib", "--out", str(out), "--cache-dir", str(cache)]) == 0

    builtin, plugin = seen["mlp_vib seed 0"], seen["tiny_vib seed 0"]
    assert len(builtin["batches"]) == len(plugin["batches"]) == 3
    for a, b in zip(builtin["batches"], plugin["batches"]):
        assert torch.equal(a, b)  # the same images in the same order, epoch by epoch
    assert not torch.equal(builtin["batches"][0], builtin["batches"][1])  # a new order per epoch
    assert all(a is b for a, b in zip(builtin["cfg"], plugin["cfg"]))  # the one frozen TrainConfig of the run
    assert all(a is b for a, b in zip(builtin["images"], plugin["images"]))
    assert builtin["lr"] == plugin["lr"] and builtin["lr"][2][0] < builtin["lr"][0][0]  # the staircase schedule (x0.97 every 2 epochs)
    assert builtin["ema"] == plugin["ema"] and len(builtin["ema"]) == 30  # EMA after every step, same steps and decay
    # training noise: each model from its own generator of (seed, registry name), the plugin's like the built-in's
    assert noise_keys == {"mlp_vib": (0, "mlp_vib"), "tiny_vib": (0, "tiny_vib")}
    assert noise_seed(0, "mlp_vib") != noise_seed(0, "tiny_vib")

    df = pd.read_csv(out / "metrics.csv")
    assert set(df.label) == {"mlp_vib", "tiny_vib"} and set(df[df.label == "tiny_vib"].backbone) == {"tiny"}
    config = json.loads((out / "config.json").read_text())
    assert config["plugins"] == [str(tiny_plugin)]
    tiny = next(m for m in config["models"] if m["label"] == "tiny_vib")
    assert len(tiny["backbone_code"]) == 64 and "backbone_code" not in config["models"][0]
    jobs = [json.loads(p.read_text()) for p in sorted((cache / "jobs").glob("*/job.json"))]
    assert len(jobs) == 2 and jobs[0]["train"] == jobs[1]["train"]

    # the config's hash does not hold the plugin's path: without the plugin the built-in's job and hash are the same
    plain = make_run_config("smoke", models=["mlp_vib"], dataset="synthetic", device="cpu", epochs=3, evaluate=False)
    with_plugin = make_run_config("smoke", models=["mlp_vib"], dataset="synthetic", device="cpu", epochs=3, evaluate=False, plugins=[str(tiny_plugin)])
    assert plain.config_hash == with_plugin.config_hash and with_plugin.plugins == (str(tiny_plugin),)
    assert plain.job_hash(plain.models[0], 0) in {j["job_hash"] for j in jobs}


def test_an_edited_plugin_is_a_new_job(tiny_plugin, tmp_path, plugin_registry):
    """The backbone's code is part of the model's identity: changed code is not served the old weights."""
    from vibbench.models.backbones import BACKBONES, CODES, FACTORIES
    from vibbench.models.methods import METHODS
    from vibbench.models.plugins import load_plugin
    from vibbench.runs.config import _resolve

    cfg = make_run_config("smoke", models=["tiny_vib"], dataset="synthetic", device="cpu", plugins=[str(tiny_plugin)])
    before = cfg.job_hash(cfg.models[0], 0)
    edited = tmp_path / "edited" / "tinyplugin.py"
    edited.parent.mkdir()
    edited.write_text(tiny_plugin.read_text().replace("hidden: int = 32", "hidden: int = 48"))
    for table, name in ((BACKBONES, "tiny"), (CODES, "tiny"), (FACTORIES, "tiny"), (METHODS, "vib_smooth")):
        del table[name]  # as in a new process
    load_plugin(str(edited))
    _resolve.cache_clear()
    assert cfg.job_hash(cfg.models[0], 0) != before


def test_a_job_in_another_process_imports_the_runs_plugins(tiny_plugin, tmp_path):
    """As on an executor's worker: a fresh interpreter gets the pickled config and trains the plugin's model."""
    cfg = make_run_config("smoke", models=["tiny_deterministic"], dataset="synthetic", device="cpu", evaluate=False, plugins=[str(tiny_plugin)])
    members = [(cfg.models[0], 0)]
    code = (
        "import pickle, sys\n"
        "from vibbench.runs.jobs import run_unit\n"
        "cfg, members, cache = pickle.loads(sys.stdin.buffer.read())\n"
        "[(record, evaluated)] = run_unit(cfg, members, cache, None, 'single')\n"
        "print(record['job_hash'])\n"
    )
    for plugins, ok in (((), False), (cfg.plugins, True)):
        payload = pickle.dumps((dataclasses.replace(cfg, plugins=plugins), members, tmp_path / "cache"))
        proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, timeout=600)
        if ok:
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            assert proc.stdout.decode().split()[-1] == cfg.job_hash(cfg.models[0], 0)
        else:  # the run records no plugin: the worker does not know the model
            assert proc.returncode != 0 and "unknown model 'tiny_deterministic'" in proc.stderr.decode()


def test_ray_refuses_a_model_whose_plugin_the_run_does_not_record(tiny_plugin):
    cfg = make_run_config("smoke", models=["tiny_vib", "mlp_vib"], dataset="synthetic", device="cpu", plugins=[str(tiny_plugin)])
    _check_plugins_recorded(cfg)  # recorded: the workers import it
    _check_plugins_recorded(make_run_config("smoke", models=["mlp_vib"], dataset="synthetic", device="cpu"))
    with pytest.raises(VibbenchError, match="tiny_vib come.* registered in this process, which Ray workers do not know: .*--plugin"):
        _check_plugins_recorded(dataclasses.replace(cfg, plugins=()))
    with pytest.raises(VibbenchError, match="mlp_vib_smooth"):  # a plugin's method on a built-in backbone too
        _check_plugins_recorded(make_run_config("smoke", models=["mlp_vib_smooth"], dataset="synthetic", device="cpu"))


def test_run_without_the_plugin_says_how_to_get_its_models(tmp_path, capsys):
    code = main(["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "tiny_vib", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    assert "need --plugin MODULE" in capsys.readouterr().err
