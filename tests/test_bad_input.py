"""Nothing silently wrong (issue 13): every bad input below gives the right result or one clear line, never a number
computed from a misread input. Tables per layer: the model's inputs, create_model's options, kl_divergence's
arguments, and `vibbench report` on a damaged results folder (a non-zero exit, one line on stderr, no traceback,
nothing written)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import vibbench
from vibbench.cli import main
from vibbench.core.errors import VibbenchError
from vibbench.models.head import kl_divergence, std_from_preactivation
from vibbench.reporting.metrics import write_metrics


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------
# the model's inputs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vibbench.create_model("mlp_vib").eval()


def images(n=16, seed=0) -> torch.Tensor:
    """MNIST-like uint8 digits (N, 28, 28): mostly black, a bright blob."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    x[:, 8:20, 10:18] = torch.randint(0, 256, (n, 12, 8), generator=g, dtype=torch.uint8)
    return x


def predict(model, x, seed=1):
    torch.manual_seed(seed)  # the same draws of z for both inputs
    with torch.no_grad():
        return model(x)


def test_uint8_mnist_batch_predicts_as_the_float_batch_over_255(model):
    u = images()
    reference = predict(model, u.float().div(255).unsqueeze(1))
    for x in (u, u.unsqueeze(1), u.reshape(len(u), 784)):  # (N, 28, 28) as MNIST.data holds it, and the other shapes
        out = predict(model, x)
        assert torch.equal(out, reference)
    assert torch.equal(out.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_parameters_dtype(model, dtype):
    x = images().float().div(255).unsqueeze(1)
    reference = predict(model, x)
    out = predict(model, x.to(dtype))
    assert out.dtype == torch.float32
    if dtype == torch.float64:
        assert torch.equal(out, reference)  # float32 pixels widened and cast back: the same numbers
    else:
        assert torch.allclose(out, reference, atol=0.05)  # the pixels were rounded to the narrower dtype


def test_autograd_through_the_input_survives_the_check(model):
    x = images().float().div(255).unsqueeze(1).double().requires_grad_()
    torch.manual_seed(0)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float64 and x.grad.abs().sum() > 0
    # an attack's step, clamped to [0, 1] as attacks do, is an ordinary input
    adv = (x.detach() + 0.3 * x.grad.sign()).clamp(0, 1).float().requires_grad_()
    model(adv).sum().backward()
    assert torch.isfinite(adv.grad).all()


def test_inputs_work_under_bf16_autocast_in_training():
    torch.manual_seed(0)
    model = vibbench.create_model("mlp_vib").train()
    for x in (images(), images().float().div(255), images().float().div(255).bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_details(x, num_samples=1)
        loss = out.logits[0].float().logsumexp(1).mean() + out.kl.mean()
        loss.backward()
        assert torch.isfinite(loss)


def test_rounding_error_at_the_edges_is_tolerated_and_passed_on_unchanged(model):
    x = images().float().div(255).unsqueeze(1)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1 + 1e-7, -1e-7
    assert torch.isfinite(predict(model, x)).all()


def _nan(x):
    x = x.clone()
    x[0, 0, 3, :3] = float("nan")
    return x


def _inf(x):
    x = x.clone()
    x[1, 0, 5, 5] = float("inf")
    return x


FLOAT = images().float().div(255).unsqueeze(1)

REFUSED_INPUTS = [
    # (case, input, exception, message)
    ("0..255 floats", FLOAT * 255, VibbenchError, r"^mlp_vib: pixels must be in \[0, 1\], got values from 0 to 2\d\d(\.\d+)?; .*divide them by 255"),
    ("[-1, 1]", FLOAT * 2 - 1, VibbenchError, r"from -1 to .*; these look normalized to \[-1, 1\]: undo that with \(x \+ 1\) / 2"),
    ("mean/std normalized", (FLOAT - 0.1307) / 0.3081, VibbenchError, r"from -0\.424\d* to 2\.8.*look normalized \(by a mean and std\?\)"),
    ("an unclipped perturbation", FLOAT + 1e-3, VibbenchError, r"got values from 0\.001 to 1\.001; slightly outside: .*x\.clamp\(0, 1\)"),
    ("NaN pixels", _nan(FLOAT), VibbenchError, r"3 of 12544 pixel values are not finite \(3 NaN, 0 infinite\)"),
    ("an inf pixel", _inf(FLOAT), VibbenchError, r"1 of 12544 pixel values are not finite \(0 NaN, 1 infinite\)"),
    ("int64 pixels", images().long(), VibbenchError, r"got dtype torch\.int64: convert with x\.to\(torch\.uint8\)"),
    ("bool pixels", images() > 0, VibbenchError, r"got dtype torch\.bool"),
    ("a numpy array", FLOAT.numpy(), TypeError, r"takes a torch tensor of images, got numpy\.ndarray: convert it with torch\.as_tensor\(x\)"),
    ("a list", FLOAT.tolist(), TypeError, r"got builtins\.list: convert it with torch\.as_tensor"),
    ("three channels", FLOAT.expand(-1, 3, -1, -1), VibbenchError, r"expects images shaped \(B, 1, 28, 28\), \(B, 28, 28\) or \(B, 784\), got \(16, 3, 28, 28\)"),
]


@pytest.mark.parametrize("case, x, error, message", REFUSED_INPUTS, ids=[c[0] for c in REFUSED_INPUTS])
def test_bad_inputs_are_refused_in_one_line(model, case, x, error, message):
    for call in (model, model.forward_details):
        with pytest.raises(error, match=message) as info:
            call(x)
        one_line(info.value)
    assert not isinstance(info.value, VibbenchError) or isinstance(info.value, ValueError)


def test_check_inputs_off_skips_the_value_check_only(model):
    try:
        model.check_inputs = False
        assert torch.isfinite(predict(model, FLOAT * 255)).all()  # the caller's responsibility now
        with pytest.raises(VibbenchError, match="dtype torch.int64"):
            model(images().long())
    finally:
        model.check_inputs = True


def test_the_trainers_check_the_training_images_once_and_not_per_step(monkeypatch):
    import vibbench.models.classifier as classifier
    from vibbench.training.config import TrainConfig
    from vibbench.training.population import train_population
    from vibbench.training.single import train_model

    cfg = TrainConfig(epochs=1, batch_size=100)
    labels = torch.randint(0, 10, (200,))
    bad = torch.rand(200, 1, 28, 28) * 255
    torch.manual_seed(0)
    model = vibbench.create_model("mlp_vib")
    with pytest.raises(VibbenchError, match=r"^the training images of m: pixels must be in \[0, 1\].*divide them by 255"):
        train_model(model, bad, labels, cfg, seed=0, label="m")
    with pytest.raises(VibbenchError, match=r"^the training images: pixels must be in \[0, 1\]"):
        train_population([model, vibbench.create_model("mlp_vib")], bad, labels, cfg, seed=0, labels_of_members=["a", "b"])
    assert model.check_inputs

    per_step = []
    monkeypatch.setattr(classifier, "check_pixels", lambda *a, **k: per_step.append(1))
    train_model(model, bad / 255, labels, cfg, seed=0, label="m")
    train_population([model, vibbench.create_model("mlp_vib")], bad / 255, labels, cfg, seed=0, labels_of_members=["a", "b"])
    assert per_step == [] and model.check_inputs  # no check inside the steps; the user's setting is back


# ---------------------------------------------------------------------------------------------
# create_model's options

BAD_OPTIONS = [
    ({"beta": math.inf}, r"^beta must be >= 0 and finite, got inf \(model 'mlp_vib'\)$"),
    ({"beta": math.nan}, r"^beta must be >= 0 and finite, got nan"),
    ({"beta": True}, r"^beta must be >= 0, got True \(a bool, not a number\)"),
    ({"beta": "x"}, r"^beta must be >= 0, got 'x' \(a str, not a number\)"),
    ({"beta": "1e-3"}, r"^beta must be >= 0, got '1e-3' \(a str, not a number\)"),
    ({"beta": -1e-3}, r"^beta must be >= 0, got -0\.001 \(model 'mlp_vib'\)$"),
    ({"confidence_penalty": -math.inf}, r"^confidence_penalty must be >= 0 and finite, got -inf"),
    ({"dropout": 1.0}, r"^dropout must be in \[0, 1\), got 1\.0"),
    ({"dropout": math.nan}, r"^dropout must be in \[0, 1\), got nan"),
    ({"label_smoothing": -0.1}, r"^label_smoothing must be in \[0, 1\), got -0\.1"),
    ({"latent_dim": 0}, r"^latent_dim must be a positive integer, got 0$"),
    ({"latent_dim": 2.5}, r"^latent_dim must be a positive integer, got 2\.5$"),
    ({"latent_dim": -4}, r"^latent_dim must be a positive integer, got -4$"),
    ({"latent_dim": True}, r"^latent_dim must be a positive integer, got True$"),
    ({"num_classes": 0}, r"^num_classes must be an integer >= 2, got 0 \(model 'mlp_vib'\)$"),
    ({"num_classes": 1}, r"^num_classes must be an integer >= 2, got 1"),
    ({"num_classes": 10.0}, r"^num_classes must be an integer >= 2, got 10\.0"),
    ({"num_classes": True}, r"^num_classes must be an integer >= 2, got True"),
    ({"eval_samples": 0}, r"^eval_samples must be a positive integer, got 0$"),
    ({"eval_samples": "12"}, r"^eval_samples must be a positive integer, got '12'$"),
    ({"train_samples": -1}, r"^train_samples must be a positive integer, got -1$"),
    ({"bta": 1e-3}, r"^unknown option for model 'mlp_vib' 'bta'\. Did you mean beta\? Known: beta, "),
    ({"latentdim": 8}, r"Did you mean latent_dim\?"),
]


@pytest.mark.parametrize("overrides, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_model_options_are_one_line_naming_option_value_and_range(overrides, message):
    from vibbench.models.registry import check_model

    for call in (vibbench.create_model, check_model):  # check_model: what `vibbench list` and run configs use
        with pytest.raises(VibbenchError, match=message) as info:
            call("mlp_vib", **overrides)
        one_line(info.value)


def test_edge_values_of_the_options_are_accepted():
    model = vibbench.create_model("mlp_vib", beta=0, num_classes=2, latent_dim=1, eval_samples=1, dropout=0.0, label_smoothing=0.999)
    assert model(torch.rand(3, 784)).shape == (3, 2)
    assert vibbench.create_model("mlp_vib", beta=np.float32(1e-2)).method.beta == pytest.approx(1e-2)


def test_a_bad_model_option_on_the_command_line_is_one_line(monkeypatch, capsys):
    import vibbench.runs.runner as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("the run started"))
    assert main(["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_vib:beta=inf"]) == 2
    err = capsys.readouterr().err
    assert err == "vibbench: error: --models: beta must be >= 0 and finite, got inf (model 'mlp_vib')\n"


# ---------------------------------------------------------------------------------------------
# kl_divergence

MU = torch.zeros(2, 2)
STD = torch.tensor([[0.5, 1.0], [2.0, 0.1]])

BAD_KL = [
    ("a negative std", (MU, -STD), r"std must be >= 0; 4 of 4 entries are negative \(min -2\)"),
    ("one negative std, with log_std", (MU, STD * torch.tensor([[1, -1], [1, 1]]), STD.log()), r"1 of 4 entries are negative"),
    ("the log variance as log_std", (MU, STD, 2 * STD.log()), r"log_std disagrees with log\(std\) in 3 of 4 entries.*that is 2 log std"),
    ("an unrelated log_std", (MU, STD, STD), r"log_std disagrees with log\(std\) in 4 of 4 entries, e\.g\. std 0\.5 has log -0\.693147 but log_std is 0\.5"),
    ("log_std of another shape", (MU, STD, STD.log()[0]), r"log_std must have std's shape \(2, 2\), got \(2,\)"),
    ("mu of another shape", (MU[0], STD), r"mu and std must have the same shape"),
]


@pytest.mark.parametrize("case, args, message", BAD_KL, ids=[c[0] for c in BAD_KL])
def test_kl_divergence_refuses_inconsistent_arguments(case, args, message):
    with pytest.raises(VibbenchError, match=message) as info:
        kl_divergence(*args)
    one_line(info.value)


def test_kl_divergence_accepts_what_the_model_computes_and_skips_checks_on_request():
    s = torch.tensor([[-300.0, -110.0, -40.0, 0.0, 5.0, 60.0]])  # std underflows to 0 at the left, log_std stays exact
    std, log_std = std_from_preactivation(s)
    mu = torch.zeros_like(std)
    assert torch.equal(kl_divergence(mu, std, log_std), kl_divergence(mu, std, log_std, validate=False))
    assert torch.isfinite(kl_divergence(mu, std, log_std)).all()
    assert torch.isfinite(kl_divergence(mu, std)).all()  # without log_std: clamped, finite
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        kl_divergence(mu.to(dtype), std.to(dtype), log_std.to(dtype))  # rounding of the narrower dtypes is tolerated
    kl_divergence(MU, -STD, validate=False)  # the caller vouches for the arguments


def test_the_models_forward_takes_the_fast_path(monkeypatch):
    import vibbench.models.head as head

    monkeypatch.setattr(head, "_check_std", lambda *a: pytest.fail("the forward pass validated its own std"))
    model = vibbench.create_model("mlp_vib").train()
    assert torch.isfinite(model.forward_details(torch.rand(4, 784)).kl).all()


# ---------------------------------------------------------------------------------------------
# vibbench report DIR

RUN_ID = "quick-mnist-0123456789"
LABELS = ("mlp_deterministic", "mlp_vib")


def _rows() -> list[dict]:
    rows = []
    for seed in (0, 1):
        for label in LABELS:
            vib = label == "mlp_vib"
            base = {"run_id": RUN_ID, "model": label, "label": label, "method": "vib" if vib else "deterministic", "backbone": "mlp",
                    "beta": 1e-3 if vib else None, "seed": seed, "dataset": "mnist"}  # fmt: skip
            for split in ("val", "test"):
                err = 0.015 + 0.001 * seed + 0.002 * vib
                rows.append(base | {"split": split, "eval_mode": "predictor", "metric": "accuracy", "value": 1 - err})
                rows.append(base | {"split": split, "eval_mode": "predictor", "metric": "error", "value": err})
            rows.append(base | {"split": "train", "eval_mode": "training", "metric": "loss", "value": 0.05})
            rows.append(base | {"split": "train", "eval_mode": "training", "metric": "seconds", "value": 12.5})
            rows.append(base | {"split": "test", "eval_mode": "predictor", "attack": "checks", "path": "all", "n": 100, "metric": "flag_large_eps", "value": 0.0})
    return rows


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    write_metrics(_rows(), d / "metrics.csv")
    config = {"run_id": RUN_ID, "profile": "quick", "seeds": [0, 1], "models": [{"label": label, "name": label} for label in LABELS]}
    (d / "config.json").write_text(json.dumps(config))
    return d


def _edit_line(line_no: int, old: str, new: str):
    def edit(d):
        lines = (d / "metrics.csv").read_text().splitlines(keepends=True)
        assert old in lines[line_no - 1], (old, lines[line_no - 1])
        lines[line_no - 1] = lines[line_no - 1].replace(old, new)
        (d / "metrics.csv").write_text("".join(lines))

    return edit


def _append_line(line_no: int, change=lambda s: s):
    def edit(d):
        text = (d / "metrics.csv").read_text()
        (d / "metrics.csv").write_text(text + change(text.splitlines(keepends=True)[line_no - 1]))

    return edit


def _keep_lines(n: int):
    def edit(d):
        lines = (d / "metrics.csv").read_text().splitlines(keepends=True)
        (d / "metrics.csv").write_text("".join(lines[:n]))

    return edit


def _write(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


def _cut_mid_row(d):
    lines = (d / "metrics.csv").read_text().splitlines(keepends=True)
    assert lines[21].endswith(",test,predictor,,,,,,,,,,,,accuracy,0.982\n")  # mlp_vib, seed 1
    (d / "metrics.csv").write_text("".join(lines[:21]) + lines[21][:-3])  # "0.982\n" -> "0.9": a wrong number if read


def _timing_value(old: str, new: str):
    def edit(d):
        text = (d / "timing.csv").read_text()
        assert old in text
        (d / "timing.csv").write_text(text.replace(old, new, 1))

    return edit


# line 2 is the first data row: mlp_deterministic, seed 0, val, accuracy 0.985
DAMAGED = [
    # (case, edit, message of the one line, --allow-partial accepts it)
    ("binary file", _write("metrics.csv", bytes(range(256)) * 4), r"metrics\.csv is not text: byte 0x80 at offset 128 is not UTF-8", False),
    ("empty file", _write("metrics.csv", b""), r"metrics\.csv is empty", False),
    ("a row with an extra field", _edit_line(3, "\n", ",1\n"), r"is not a metrics table vibbench wrote: .*Expected 23 fields in line 3, saw 24", False),
    ("a row cut short", _edit_line(3, ",error,0.015", ""), r"metrics\.csv line 3 \(mlp_deterministic, seed 0\) has no metric", False),
    ("a duplicated row", _append_line(2), r"metrics\.csv line 26 \(mlp_deterministic, seed 0, accuracy\) repeats line 2: .*1 repeated row\)", False),
    ("two run ids", _append_line(2, lambda s: s.replace(RUN_ID, "another-run")),
     r"rows of 2 runs in one folder \(quick-mnist-0123456789, another-run\).*compare runs side by side instead of pooling them", False),
    ("accuracy 5.0", _edit_line(2, ",0.985\n", ",5.0\n"), r"line 2 \(mlp_deterministic, seed 0, accuracy\): value 5\.0 is out of range \(1 such row\); accuracy is a fraction in \[0, 1\]", False),
    ("error -0.2", _edit_line(3, ",0.015\n", ",-0.2\n"), r"line 3 \(mlp_deterministic, seed 0, error\): value -0\.2 is out of range", False),
    ("a flag of 0.5", _edit_line(7, ",0\n", ",0.5\n"), r"line 7 \(mlp_deterministic, seed 0, flag_large_eps\): value 0\.5 is out of range .*flag_large_eps is 0 or 1", False),
    ("a decimal comma in the first row", _edit_line(2, ",0.985\n", ",0,985\n"), r"not a metrics table vibbench wrote: its first row has more fields than its header", False),
    ("a decimal comma in a later row", _edit_line(4, ",0.985\n", ",0,985\n"), r"Expected 23 fields in line 4, saw 24", False),
    ("a word for a value", _edit_line(2, ",0.985\n", ",high\n"), r"line 2 \(mlp_deterministic, seed 0, accuracy\): value 'high' is not a number \(1 such row\)", False),
    ("a word for a seed", _edit_line(2, ",0,mnist,", ",zero,mnist,"), r"line 2 \(mlp_deterministic, accuracy\): seed 'zero' is not a number", False),
    ("timing.csv of another run", lambda d: (d / "timing.csv").write_text((d / "timing.csv").read_text().replace(RUN_ID, "another-run")),
     r"metrics\.csv and timing\.csv: rows of 2 runs in one folder \(quick-mnist-0123456789, another-run\)", False),
    ("negative seconds", _timing_value(",12.5", ",-12.5"), r"timing\.csv line 2 \(mlp_deterministic, seed 0, seconds\): value -12\.5 is negative", False),
    ("a model missing", _keep_lines(1 + 3 * 6), r"metrics\.csv lacks 1 of the 4 models x seeds config\.json lists \(mlp_vib seed 1\).*--allow-partial", True),
    ("a seed missing", _keep_lines(1 + 2 * 6), r"lacks 2 of the 4 models x seeds config\.json lists \(mlp_deterministic seed 1, mlp_vib seed 1\)", True),
    ("cut within the last row", _cut_mid_row, r"metrics\.csv ends in the middle of a row: it was cut short .*--allow-partial", True),
]


@pytest.mark.parametrize("case, edit, message, partial_ok", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_results_folder_is_one_line_and_writes_nothing(run_dir, capsys, case, edit, message, partial_ok):
    edit(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["report", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.startswith("vibbench: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert pd.Series([err]).str.contains(message).all(), (message, err)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no report.md, no figures/

    code = main(["report", "--allow-partial", str(run_dir)])
    out, err = capsys.readouterr()
    if not partial_ok:
        assert code == 2 and err.startswith("vibbench: error: ") and err.count("\n") == 1
        return
    assert code == 0 and err == "" and out.strip().endswith("report.md")
    lines = (run_dir / "report.md").read_text().splitlines()
    assert lines[0].startswith("# vibbench report") and lines[1] == "" and lines[3] == ""
    assert lines[2].startswith("**Partial report**: ") and lines[2].endswith("; the tables below cover the rest.")
    assert sum("Partial report" in line for line in lines) == 1
    if "missing" in case:
        assert "seed 1, which config.json lists" in lines[2]
    else:
        assert "metrics.csv was cut off within its last row, which is left out" in lines[2]


def test_an_intact_folder_reports_without_a_partial_line(run_dir, capsys):
    assert main(["report", "--allow-partial", str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    assert "Partial report" not in text and "`mlp_vib`" in text
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == text


def test_the_runner_path_checks_the_rows_it_reports(run_dir):
    """vibbench run hands write_report the frame it has just written: the row checks and config.json's list apply."""
    from vibbench.reporting.report import write_report

    rows = _rows()
    with pytest.raises(VibbenchError, match=r"^metrics\.csv line 2\b.*value 5\.0 is out of range"):
        write_report(run_dir, write_metrics([rows[0] | {"value": 5.0}] + rows[1:], run_dir / "metrics.csv"))
    with pytest.raises(VibbenchError, match=r"lacks 2 of the 4 models x seeds config\.json lists"):
        write_report(run_dir, write_metrics([r for r in rows if r["seed"] == 0], run_dir / "metrics.csv"))
    assert not (run_dir / "report.md").exists()


# ---------------------------------------------------------------------------------------------
# the command line: each mistake one line in one format, exit 2, nothing written, no traceback

BAD_COMMANDS = [
    (["run", "--epochs", "x"], r"^vibbench: error: argument --epochs: .*\(usage: vibbench run --help\)$"),
    (["run", "--profile", "quik"], r"unknown profile 'quik'\. Did you mean quick\?"),
    (["run", "--models", "mlp_vib:beta=1e-3,beta=1e-2"], r"beta is given twice"),
    (["run", "--models", "mlp_vib:eval_samples=3"], r"eval_samples .* is a setting of the whole run"),
    (["run", "--models", "mlp_vib:latent_dim=2.5"], r"latent_dim"),
    (["run", "--models", "mlp_vib:num_classes=3", "--dataset", "synthetic"], r"predicts 3 classes but synthetic has 10"),
    (["bench", "--device", "cpu", "--implementations", "fused"], r"--implementations fused cannot be measured on cpu: .*needs CUDA"),
    (["eval", "--weights", "w.pt"], r"give --weights PATH right after the --model it belongs to"),
    (["report", "no-such-folder"], r"no-such-folder"),
    (["nonsense"], r"^vibbench: error: argument command: invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("argv, message", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_a_bad_command_line_is_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    import re

    from vibbench.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit here
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err.strip()), err
    assert not list(tmp_path.iterdir())  # nothing written, no empty results/ folder left behind


def test_the_same_model_twice_runs_once_with_a_note(capsys):
    from vibbench.runs.config import parse_model_specs

    specs = parse_model_specs(["mlp_vib", "mlp_vib:beta=1e-3", "mlp_vib:beta=0.001"])
    assert len(specs) == 1
    assert capsys.readouterr().err.count("is mlp_vib again (the same model): it runs once") == 2


@pytest.mark.parametrize(
    "address, message",
    [
        ("nonsense", r"'nonsense' is not a Ray address: give HOST:PORT"),
        ("host:99999", r"is not a Ray address"),
        ("127.0.0.1:1", r"cannot reach the Ray cluster at 127.0.0.1:1 \(--ray-address\)"),
    ],
)
def test_a_bad_ray_address_is_refused_at_start(address, message):
    from vibbench.runs.executors import check_ray_address

    with pytest.raises(VibbenchError, match=message) as exc:
        check_ray_address(address)
    one_line(exc.value)


def test_no_ray_address_or_local_is_not_checked(monkeypatch):
    from vibbench.runs.executors import check_ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_ray_address(None)
    check_ray_address("local")
    monkeypatch.setenv("RAY_ADDRESS", "nonsense")
    with pytest.raises(VibbenchError, match=r"\$RAY_ADDRESS 'nonsense'"):
        check_ray_address(None)


@pytest.mark.parametrize("content, reason", [(b"{not json", "not valid JSON"), (b"\xff\xfe\x00", "not UTF-8 text")])
def test_a_damaged_cache_entry_is_named_in_the_log_before_it_is_recomputed(tmp_path, capsys, content, reason):
    from vibbench.runs.cache import _read_entry

    path = tmp_path / "result.json"
    path.write_bytes(content)
    assert _read_entry(path, "job_hash", "abc", "delete it") is None
    err = capsys.readouterr().err
    assert f"damaged cache entry {path} ({reason}" in err and "computing it again" in err


def test_progress_reads_elapsed_time_and_eta():
    from vibbench.core.progress import elapsed_and_eta

    assert elapsed_and_eta(60, 0, 3) == "60 s elapsed"  # no ETA before the first item is done
    assert elapsed_and_eta(60, 1, 3) == "60 s elapsed, ETA 2 min 0 s"
    assert elapsed_and_eta(7200, 2, 3) == "2 h 00 min elapsed, ETA 60 min 0 s"
    assert elapsed_and_eta(30, 3, 3) == "30 s elapsed"
