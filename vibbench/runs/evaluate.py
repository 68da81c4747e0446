"""`vibbench.evaluate(model, ...)`: the harness on any PyTorch classifier of your own, in one call.

The model is checked first (runs/own_models.py, models/external.py), then measured by the same sections under the
same profile settings as the registry's models in a run (clean accuracy, robustness, calibration, OOD, shift). With
`out` the run's files are written as `vibbench run` writes them (runs/runner.py): metrics.csv, summary.md, the
report and its figures, config.json, evaluation_set.json, options.json and provenance.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from torch import nn

from vibbench.data.datasets import load_dataset
from vibbench.reporting.metrics import metrics_frame, read_metrics, tidy_metrics
from vibbench.runs.config import make_run_config
from vibbench.runs.jobs import deterministic
from vibbench.runs.own_models import evaluation_data, own_model, own_rows, own_run_id, prepare_own_models
from vibbench.runs.runner import run


def evaluate(
    model: nn.Module,
    *,
    profile: str = "quick",
    dataset: str = "mnist",
    out: str | Path | None = None,
    label: str | None = None,
    stochastic: bool | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    no_eval: bool = False,
    attack_precision: str | None = None,
) -> pd.DataFrame:
    """Evaluate `model`, a torch.nn.Module mapping images in [0, 1] shaped (B, 1, 28, 28) to (B, C) logits or
    log-probabilities, with the sections and settings of `profile` on `dataset`'s test split; returns the metrics in
    metrics.csv's schema (typed as `tidy_metrics` does: "" and NaN where a condition does not apply).

    stochastic: whether it samples at test time (None: its `stochastic` attribute, default False); a stochastic
    model is judged over several noise draws and attacked with EOT, and also on its mean path if it has a boolean
    `mean_mode` attribute. label: its name in the tables (default: its class name). out: a folder to write the
    run's files to. The model is moved to `device` ("auto": CUDA if available) and evaluated in eval mode (its
    train/eval flag is restored). no_eval: clean accuracy only. attack_precision: the gradient attacks' arithmetic, auto
    (bf16 where the device has it natively), fp32 or bf16 (None: the profile's; the judge always computes in fp32)."""
    cfg = dataclasses.replace(make_run_config(profile, dataset=dataset, device=device, evaluate=not no_eval, attack_precision=attack_precision), models=())
    own = own_model(model, label=label, stochastic=stochastic)
    data_dir = Path(data_dir) if data_dir is not None else None
    if out is not None:
        run(cfg, out_dir=Path(out), data_dir=data_dir, train=False, own_models=[own])
        return tidy_metrics(read_metrics(Path(out)))
    deterministic()
    data = load_dataset(cfg.train.dataset, data_dir)
    (prepared,) = prepare_own_models(cfg, [own], data)
    splits, ood = evaluation_data(cfg, data, data_dir)
    return tidy_metrics(metrics_frame(own_rows(cfg, own_run_id(cfg, [own]), own, prepared, splits, ood, cfg.seeds[0])))
