"""Your own models (issue 12): the README's `vibbench.evaluate` example on a tiny nn.Sequential, `vibbench eval --model
FILE.py:FACTORY` with and without --weights and beside a registry model in one run, a toy stochastic module
(judged over several draws, attacked on the EOT path only; the mean path where it has one), bad models refused
in one line, and `vibbench compare` on two of those smoke runs.

Every run here is the smoke profile on the synthetic dataset with tiny networks: the registry model is a plugin
backbone of 32 hidden units."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import vibbench
from vibbench.cli import main
from vibbench.data.datasets import load_dataset
from vibbench.evaluation.attacks.adversarial import adversarial_examples
from vibbench.evaluation.attacks.target import paths_for
from vibbench.evaluation.settings import AttackSettings
from vibbench.models.external import ExternalModel
from vibbench.reporting.metrics import COLUMNS, clean_rows, read_metrics, tidy_metrics
from vibbench.reporting.stats import newcombe_paired_interval
from vibbench.runs.own_models import state_sha256

ROOT = Path(__file__).resolve().parents[2]
N_TEST = 500  # the smoke profile's max_eval_examples

MODEL_FILE = '''
import torch
from torch import nn


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
'''

PLUGIN = '''
import vibbench


@vibbench.register_backbone("ownt")
def make_ownt(dropout: float = 0.0):
    from torch import nn

    from vibbench.models.layers import Backbone, Dropout

    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), Dropout(dropout, 32)), 32)
'''


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def clean_test_accuracy(df: pd.DataFrame, label: str) -> float:
    c = clean_rows(tidy_metrics(df))
    return c[(c.label == label) & (c.split == "test") & (c.eval_mode == "predictor") & (c.metric == "accuracy")].value.item()


def direct_accuracy(net: nn.Module) -> float:
    """The clean test accuracy of `net` on the smoke profile's test images, computed here without the harness."""
    test = load_dataset("synthetic").test
    with torch.no_grad():
        return (net.cpu().eval()(test.images[:N_TEST]).argmax(-1) == test.labels[:N_TEST]).double().mean().item()


# ---------------------------------------------------------------------------------------------
# the Python door: the README's example


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's "Evaluate your own model" code, run as written (in a fresh folder): its namespace and folder."""
    folder = tmp_path_factory.mktemp("readme")
    code = readme_block("Evaluate your own model")
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, folder


def test_the_readme_example_evaluates_a_tiny_sequential_as_a_run_does(readme_run):
    ns, folder = readme_run
    net, df = ns["net"], ns["df"]
    assert isinstance(net, nn.Sequential) and list(df.columns) == list(COLUMNS)
    out = folder / ns["out"]
    for name in ("metrics.csv", "summary.md", "report.md", "config.json", "provenance.json", "evaluation_set.json", "options.json"):
        assert (out / name).is_file(), name
    assert list((out / "figures").glob("*.png"))
    pd.testing.assert_frame_equal(df, tidy_metrics(read_metrics(out)))  # returned = written
    label = ns["label"]
    assert set(df.label) == {label} and set(df.method) == {"external"}
    assert clean_test_accuracy(df, label) == pytest.approx(direct_accuracy(net), abs=1e-12)
    # every section of a run, on the model's one (direct) attack path; no rate: it has no latent code
    assert {"calibration", "ood", "corruption", "attack"} <= {c for c in ("calibration", "ood", "corruption", "attack") if (df[c] != "").any()}
    assert set(df.path[df.path != ""]) == {"direct", "all"} and not df.metric.isin(["rate_bits", "izy_bits"]).any()
    assert (df.score == "rate").sum() == 0
    config = json.loads((out / "config.json").read_text())
    (record,) = config["own_models"]
    assert record["label"] == label and record["state_sha256"] == state_sha256(net) and record["stochastic"] is False
    assert json.loads((out / "provenance.json").read_text())["own_models"] == config["own_models"]
    assert config["run_id"] == df.run_id.iloc[0] != config["config_hash"]
    assert f"`{label}`" in (out / "report.md").read_text()


def test_without_a_folder_evaluate_writes_nothing_and_returns_the_same_rows(readme_run, tmp_path, monkeypatch):
    ns, folder = readme_run
    monkeypatch.chdir(tmp_path)
    df = vibbench.evaluate(ns["net"], profile="smoke", dataset="synthetic", label=ns["label"], no_eval=True)
    assert not list(tmp_path.iterdir())
    written = ns["df"]
    clean = clean_rows(written)
    key = ["split", "eval_mode", "metric"]
    returned = df.sort_values(key)[key + ["value"]].reset_index(drop=True)
    expected = clean[clean.split != "train"].sort_values(key)[key + ["value"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(returned, expected, check_exact=False, rtol=0, atol=1e-9)  # metrics.csv's text round trip


# ---------------------------------------------------------------------------------------------
# the command line: --model FILE.py:FACTORY [--weights PATH], beside a registry model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three smoke runs sharing one cache: a registry model (a plugin backbone of 32 units); then `vibbench eval` of it
    with your own net and trained weights (label `mine`); then your net alone, without weights, under the same label."""
    from vibbench.models.backbones import BACKBONES, CODES, FACTORIES
    from vibbench.models.methods import METHODS
    from vibbench.runs.config import _resolve

    base = tmp_path_factory.mktemp("own")
    (base / "mynet.py").write_text(MODEL_FILE)
    (base / "ownplugin.py").write_text(PLUGIN)
    # weights of the same architecture, trained briefly here: their predictions differ from the factory's
    sys.path.insert(0, str(base))
    try:
        import mynet  # noqa: PLC0415
    finally:
        sys.path.remove(str(base))
    net = mynet.make_net()
    train = load_dataset("synthetic").train
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(60):
        i = slice(100 * (step % 10), 100 * (step % 10) + 100)
        opt.zero_grad()
        nn.functional.cross_entropy(net(train.images[i]), train.labels[i]).backward()
        opt.step()
    torch.save(net.state_dict(), base / "mynet.pt")
    sys.modules.pop("mynet", None)

    tables = (BACKBONES, FACTORIES, CODES, METHODS)
    saved = [dict(t) for t in tables]
    common = ["--profile", "smoke", "--dataset", "synthetic", "--device", "cpu", "--cache-dir", str(base / "cache")]
    plugin = ["--plugin", str(base / "ownplugin.py")]
    try:
        assert main(["run", *common, *plugin, "--models", "ownt_deterministic", "--out", str(base / "registry")]) == 0
        model = ["--model", f"mine={base / 'mynet.py'}:make_net"]
        assert main(["eval", *common, *plugin, "--models", "ownt_deterministic", *model, "--weights", str(base / "mynet.pt"), "--out", str(base / "joined")]) == 0
        assert main(["eval", *common, *model, "--out", str(base / "alone")]) == 0
    finally:
        for t, before in zip(tables, saved):
            t.clear()
            t.update(before)
        for name in [m for m in sys.modules if m.startswith("vibbench_plugin_ownplugin")]:
            del sys.modules[name]
        _resolve.cache_clear()
    return base, net


def test_your_model_joins_the_registry_models_in_one_run_and_report(runs):
    base, trained = runs
    joined = read_metrics(base / "joined")
    assert list(pd.unique(joined.label)) == ["ownt_deterministic", "mine"] and joined.run_id.nunique() == 1
    registry = read_metrics(base / "registry")
    key = [c for c in COLUMNS if c != "run_id"]
    # the registry model's rows are the registry run's (served from the cache), only the run id differs
    mine = joined[joined.label == "ownt_deterministic"][key].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, registry[key].reset_index(drop=True), check_dtype=False)
    assert clean_test_accuracy(joined, "mine") == pytest.approx(direct_accuracy(trained), abs=1e-12)
    report = (base / "joined" / "report.md").read_text()
    assert "`mine`" in report and "`ownt_deterministic`" in report


def test_the_weights_and_the_file_are_recorded_by_their_sha256(runs):
    base, _ = runs
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    config = json.loads((base / "joined" / "config.json").read_text())
    (record,) = config["own_models"]
    assert record["file_sha256"] == sha(base / "mynet.py") and record["weights_sha256"] == sha(base / "mynet.pt")
    assert record["factory"] == "make_net" and record["weights"] == str(base / "mynet.pt")
    assert json.loads((base / "joined" / "provenance.json").read_text())["own_models"] == config["own_models"]
    (alone,) = json.loads((base / "alone" / "config.json").read_text())["own_models"]
    assert "weights" not in alone and alone["file_sha256"] == record["file_sha256"] and alone["state_sha256"] != record["state_sha256"]


def test_without_weights_the_factorys_model_is_evaluated(runs):
    base, _ = runs
    alone = read_metrics(base / "alone")
    sys.path.insert(0, str(base))
    try:
        import mynet  # noqa: PLC0415

        fresh = mynet.make_net()
    finally:
        sys.path.remove(str(base))
        sys.modules.pop("mynet", None)
    assert set(alone.label) == {"mine"}  # --model alone: only your models, no registry model
    assert clean_test_accuracy(alone, "mine") == pytest.approx(direct_accuracy(fresh), abs=1e-12)


def test_compare_sets_two_smoke_runs_side_by_side_paired_on_the_same_images(runs, tmp_path):
    base, _ = runs
    out = tmp_path / "cmp" / "joined-vs-alone.md"
    assert main(["compare", str(base / "alone"), str(base / "joined"), "-o", str(out)]) == 0
    text = out.read_text()
    assert out.with_suffix(".png").is_file() and out.with_suffix(".pdf").is_file()
    assert "measured the same test images" in text and "pooled" in text
    # the paired worst-case difference of `mine`, from the per-image outcomes of both runs, checked against their rows
    a, b = tidy_metrics(read_metrics(base / "alone")), tidy_metrics(read_metrics(base / "joined"))
    b = b[b.label == "mine"]
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        ra, rb = (d[(d.metric == "worst_case_radius") & (d.norm == norm)].set_index("bin").value >= eps - 1e-9 for d in (a, b))
        rb = rb.reindex(ra.index)
        both, only_a, only_b = int((ra & rb).sum()), int((ra & ~rb).sum()), int((~ra & rb).sum())
        row = lambda d: d[(d.attack == "worst_case") & (d.metric == "robust_accuracy") & (d.norm == norm) & (d.eps == eps)].value.item()  # noqa: E731
        assert (only_b - only_a) / len(ra) == pytest.approx(row(b) - row(a), abs=1e-12)
        low, high = newcombe_paired_interval(both, only_a, only_b, len(ra) - both - only_a - only_b)
        title = f"worst-case robust accuracy, {'L∞' if norm == 'linf' else 'L2'} ε={eps:g}"
        line = next(x for x in text.splitlines() if x.startswith("| `mine` |") and title in x)
        assert f"{100 * (row(b) - row(a)):+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]" in line and "paired Newcombe" in line
    # the registry model is in one run only: its row has no difference
    assert any(x.startswith("| `ownt_deterministic` |") and x.rstrip().endswith("| — | — |") for x in text.splitlines())


def test_compare_refuses_runs_of_other_test_images_in_one_line(runs, tmp_path, capsys):
    base, _ = runs
    other = tmp_path / "other"
    other.mkdir()
    for f in (base / "alone").iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    record = json.loads((other / "evaluation_set.json").read_text())
    record["seed"] = 1
    (other / "evaluation_set.json").write_text(json.dumps(record))
    assert main(["compare", str(base / "alone"), str(other), "-o", str(tmp_path / "c.md")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "did not measure the same test images: evaluation set seed 0 vs 1" in err and "--allow-different" in err
    assert not (tmp_path / "c.md").exists()
    assert main(["compare", str(base / "alone"), str(other), "-o", str(tmp_path / "c.md"), "--allow-different"]) == 0
    text = (tmp_path / "c.md").read_text()
    assert "every interval is unpaired" in text and "paired Newcombe" not in text and "Newcombe, unpaired" in text


def test_report_refuses_pooled_runs_and_points_to_compare(runs, tmp_path, capsys):
    base, _ = runs
    pooled = pd.concat([read_metrics(base / "alone"), read_metrics(base / "registry")])
    (tmp_path / "metrics.csv").write_text(pooled.to_csv(index=False))
    assert main(["report", str(tmp_path)]) == 2
    assert "vibbench compare DIR_A DIR_B" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# stochastic modules


class NoisyNet(nn.Module):
    """A toy classifier that samples at test time: a linear map plus noise on its logits."""

    stochastic = True

    def __init__(self, noise: float = 2.0):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(784, 10)
        self.noise = noise
        self.grad_calls = 0

    def forward(self, x):
        if x.requires_grad:
            self.grad_calls += 1
        out = self.linear(x.flatten(1)) * 20
        return out + self.noise * torch.randn_like(out)


class NoisyNetWithMeanPath(NoisyNet):
    def __init__(self):
        super().__init__()
        self.mean_mode = False

    def forward(self, x):
        out = self.linear(x.flatten(1)) * 20
        return out if self.mean_mode else out + self.noise * torch.randn_like(out)


def test_a_stochastic_module_is_judged_over_draws_and_attacked_with_eot_only():
    df = vibbench.evaluate(NoisyNet(), profile="smoke", dataset="synthetic", device="cpu")
    rob = df[df.attack != ""]
    assert set(rob.path) == {"eot", "all"}  # no mean path: the EOT path alone
    measured = (df.eval_mode != "training") & (df.metric != "seconds")  # timing rows name their section
    assert set(df.eval_mode[measured]) == {"predictor"}  # no mean-mode rows either
    where = ["attack", "path", "norm", "eps", "n"]  # n: the clean column is given for each image set
    ra = rob[rob.metric == "robust_accuracy"].set_index(where).value
    every = rob[rob.metric == "robust_accuracy_all_draws"].set_index(where).value
    # the judge's draws disagree on a noisy model: robust under every draw is rarer than robust on average
    assert (every <= ra.reindex(every.index) + 1e-12).all() and (every < ra.reindex(every.index) - 1e-9).any()
    assert (rob[rob.metric == "judge_disagreement"].value > 0).any()


def test_eot_averages_eot_iter_calls_of_the_module_per_step():
    net = NoisyNet()
    model = ExternalModel(net, name="noisy", num_classes=10, stochastic=True)
    test = load_dataset("synthetic").test
    settings = AttackSettings(pgd_steps=3, eot_iter=4, batch_size=50)
    adversarial_examples(model, test.images[:20], test.labels[:20], "pgd", 0.1, "eot", settings)
    assert net.grad_calls == 3 * 4  # steps x draws per gradient
    net.grad_calls = 0
    det = ExternalModel(net, name="noisy", num_classes=10, stochastic=False)
    adversarial_examples(det, test.images[:20], test.labels[:20], "pgd", 0.1, "direct", settings)
    assert net.grad_calls == 3


def test_the_mean_path_only_where_the_module_has_one():
    plain = ExternalModel(NoisyNet(), name="a", num_classes=10, stochastic=True)
    with_mean = ExternalModel(NoisyNetWithMeanPath(), name="b", num_classes=10, stochastic=True)
    assert paths_for(plain) == ("eot",) and paths_for(with_mean) == ("mean", "eot")
    x = torch.rand(4, 1, 28, 28)
    with_mean.mean_mode = True
    assert torch.equal(with_mean(x), with_mean(x))  # the mean path is deterministic
    with_mean.mean_mode = False
    assert not torch.equal(with_mean(x), with_mean(x))
    out = with_mean.forward_details(x, num_samples=5)
    assert out.logits.shape == (5, 4, 10) and torch.allclose(out.prediction().exp().sum(-1), torch.ones(4))


# ---------------------------------------------------------------------------------------------
# bad models: one line each, before anything is evaluated


class Returns(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.linear(x.flatten(1)), x)


def _fails(x):
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x784 and 100x10)")


BAD_MODELS = {
    "a tuple": (lambda out, x: (out, out), "returned a builtins.tuple, not a tensor"),
    "one number per image": (lambda out, x: out[:, 0], r"returned shape \(8,\) for 8 synthetic test images"),
    "5 classes": (lambda out, x: out[:, :5], "returns 5 classes but synthetic has 10"),
    "NaN": (lambda out, x: out * float("nan"), "returned 80 non-finite values"),
    "probabilities": (lambda out, x: out.softmax(-1), "returns probabilities"),
    "integers": (lambda out, x: out.argmax(-1, keepdim=True).expand(-1, 10), "returned torch.int64 values"),
    "no gradient": (lambda out, x: out.detach(), "does not depend differentiably on x"),
    "undeclared noise": (lambda out, x: out + torch.randn_like(out), "samples at test time. Declare it"),
    "an error inside": (lambda out, x: _fails(x), r"failed on 8 synthetic test images .*RuntimeError: mat1 and mat2"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_bad_model_is_refused_in_one_line_before_evaluation(case):
    fn, message = BAD_MODELS[case]
    with pytest.raises(vibbench.VibbenchError, match=message) as info:
        vibbench.evaluate(Returns(fn), profile="smoke", dataset="synthetic", device="cpu", label="bad")
    assert one_line(str(info.value)).startswith("bad")


def test_not_a_module_and_a_bad_label_are_refused():
    with pytest.raises(vibbench.VibbenchError, match="takes a torch.nn.Module, got a builtins.function"):
        vibbench.evaluate(lambda x: x, profile="smoke", dataset="synthetic")
    with pytest.raises(vibbench.VibbenchError, match="label 'a:b' must be letters"):
        vibbench.evaluate(nn.Linear(784, 10), profile="smoke", dataset="synthetic", label="a:b")


@pytest.mark.parametrize(
    "spec, weights, message",
    [
        ("mynet.py", None, "write FILE.py:FACTORY or package.module:FACTORY"),
        ("missing.py:make_net", None, "missing.py is not a Python file"),
        ("mynet.py:make_nett", None, "unknown function 'make_nett'. Did you mean make_net\\? Known: broken, make_net, not_a_module"),
        ("mynet.py:broken", None, r"broken\(\) failed: ValueError: no weights here"),
        ("mynet.py:not_a_module", None, r"not_a_module\(\) returned a builtins.int, not a torch.nn.Module"),
        ("mynet.py:make_net", "nothing.pt", "the weights file .*nothing.pt does not exist"),
        ("mynet.py:make_net", "other.pt", r"does not fit the model: 4 missing \(1.weight, 1.bias, 3.weight, ...\); 2 unexpected \(layer.weight, layer.bias\)"),
        ("mynet.py:make_net", "text.pt", "is not a state_dict torch.load\\(weights_only=True\\) reads"),
        ("mynet.py:make_net", "classes.pt", "returns 3 classes but synthetic has 10"),
    ],
)
def test_a_bad_model_on_the_command_line_is_one_line(tmp_path, monkeypatch, capsys, spec, weights, message):
    (tmp_path / "mynet.py").write_text(MODEL_FILE + "\n\ndef broken():\n    raise ValueError('no weights here')\n\n\ndef not_a_module():\n    return 3\n")
    torch.save({"layer.weight": torch.zeros(10, 784), "layer.bias": torch.zeros(10)}, tmp_path / "other.pt")
    state = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).state_dict()
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(state | {"3.weight": torch.zeros(3, 16), "3.bias": torch.zeros(3)}, tmp_path / "classes.pt")
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--profile", "smoke", "--dataset", "synthetic", "--device", "cpu", "--no-eval", "--model", spec]
    args += ["--weights", weights] if weights else []
    if weights == "classes.pt":  # the weights load only into a net whose last layer has 3 outputs
        (tmp_path / "mynet.py").write_text(MODEL_FILE.replace("nn.Linear(16, 10)", "nn.Linear(16, 3)"))
    assert main([*args, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert re.search(message, one_line(capsys.readouterr().err))
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_weights_must_follow_their_model(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--weights", "w.pt", "--model", "a.py:f"])
    assert info.value.code == 2 and "give --weights PATH right after the --model it belongs to" in capsys.readouterr().err


def test_another_model_of_yours_never_silently_replaces_a_run(tmp_path, monkeypatch, capsys):
    """The config hash leaves own models out: the output folder knows the run by its run id too."""
    from vibbench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text(
        "import torch\nfrom torch import nn\n\ndef make_net():\n    torch.manual_seed(0)  # the same weights at every call: the same run\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n\n"
        "def make_wide():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    )
    common = ["eval", "--profile", "smoke", "--dataset", "synthetic", "--no-eval", "--out", "out"]
    assert main(common + ["--model", "mine=mynet.py:make_net"]) == 0, capsys.readouterr().err
    before = (tmp_path / "out" / "metrics.csv").read_bytes()
    assert main(common + ["--model", "mine=mynet.py:make_net"]) == 0  # the same run again: fine
    capsys.readouterr()
    assert main(common + ["--model", "mine=mynet.py:make_wide"]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "out" / "metrics.csv").read_bytes() == before
    assert main(common + ["--model", "mine=mynet.py:make_wide", "--overwrite"]) == 0
    assert (tmp_path / "out" / "metrics.csv").read_bytes() != before
