"""Result files: the tidy metrics.csv (one row per measurement) and the summary.md tables.

Values in data files are floats (accuracy as a fraction); rounding, percent and +- only in
rendered Markdown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vibbench.core.atomic import atomic_write_text
from vibbench.core.errors import VibbenchError
from vibbench.reporting.stats import mean_ci95

ID_COLUMNS = ("run_id", "model", "label", "method", "backbone", "beta", "seed", "dataset")
CONDITION_COLUMNS = ("split", "eval_mode", "attack", "path", "norm", "eps", "corruption", "severity", "ood", "score", "calibration", "bin", "n")
COLUMNS = ID_COLUMNS + CONDITION_COLUMNS + ("metric", "value")
"""The tidy schema of metrics.csv: one row per measurement; a condition column is empty where it does not apply.

- clean:       split val|test, eval_mode predictor|mean; metric accuracy, error, nll (nats), rate_bits, izy_bits
- training:    split train, eval_mode training; metric loss, ce, kl (nats), seconds, examples_per_second
- robustness:  split test, eval_mode predictor, attack (fgsm, pgd, ..., worst_case, clean, checks, gradient),
               path (direct|mean|eot|all), norm (linf|l2), eps, n; metric robust_accuracy, large_eps_accuracy,
               median_adv_distance, zero_grad_fraction, flag_nonmonotone|flag_large_eps|flag_blackbox_stronger|flag_zero_grad (0/1)
- calibration: split test, eval_mode predictor|mean, calibration none|temperature; metric ece, mce, adaptive_ece,
               nll, brier, accuracy, temperature; reliability diagram: bin (0..14), metric reliability_count,
               reliability_accuracy, reliability_confidence, reliability_lower, reliability_upper
- ood:         split test, ood (the OOD dataset), score msp|entropy|rate; metric auroc, aupr, fpr95; ROC curve: bin (point index),
               metric roc_fpr, roc_tpr
- shift:       split test, eval_mode predictor, corruption, severity (1..5); metric accuracy, ece, nll
"""


TIMING_METRICS = ("seconds", "examples_per_second")
"""Measurements of the machine, not of the models: kept out of metrics.csv (in timing.csv, same schema),
so that metrics.csv of the same config and seed is bit-identical from run to run."""


def write_metrics(rows: list[dict], path: Path) -> pd.DataFrame:
    """Write metrics.csv, and the timing rows to timing.csv beside it; returns all rows."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("severity", "bin", "n"):
        df[col] = df[col].astype("Int64")
    timing = df.metric.isin(TIMING_METRICS)
    atomic_write_text(path, df[~timing].to_csv(index=False, float_format="%.10g"))
    atomic_write_text(Path(path).with_name("timing.csv"), df[timing].to_csv(index=False, float_format="%.10g"))
    return df


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv of a run folder, with timing.csv's rows appended when present."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise VibbenchError(f"{run_dir} has no metrics.csv: point to a folder written by `vibbench run`")
    frames = [pd.read_csv(path)]
    if (Path(run_dir) / "timing.csv").is_file():
        frames.append(pd.read_csv(Path(run_dir) / "timing.csv"))
    for frame, name in zip(frames, ("metrics.csv", "timing.csv")):
        missing = set(COLUMNS) - set(frame.columns)
        if missing:
            raise VibbenchError(f"{Path(run_dir) / name} lacks the columns {', '.join(sorted(missing))}; it was not written by vibbench")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _cell(values: list[float], scale: float = 100.0, digits: int = 2, suffix: str = "%") -> str:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    mean, half = mean_ci95(values)
    if math.isnan(half):
        return f"{mean * scale:.{digits}f}{suffix}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}{suffix}"


def summary_markdown(df: pd.DataFrame, title: str = "") -> str:
    """One table per dataset, one row per model; cells are mean ± 95% t-interval over seeds."""
    lines = [f"# {title}" if title else "# Summary", ""]
    lines.append(
        "Test error of the model's predictor (the 12-sample average of softmax probabilities for VIB), "
        "of the mean mode (z = mu), and validation error; rate = E[KL(q(z|x) || N(0, I))] in bits (an upper bound "
        "on I(Z;X)). With several seeds a cell reads mean ± half-width of the 95% t-interval."
    )
    for dataset, ddf in df.groupby("dataset", sort=False):
        lines += ["", f"## {dataset}", ""]
        header = ["model", "beta", "seeds", "test error", "test error (mean mode)", "val error", "rate (bits)", "train time (s)"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for label, mdf in ddf.groupby("label", sort=False):

            def vals(split, mode, metric):
                sel = mdf[(mdf.split == split) & (mdf.eval_mode == mode) & (mdf.metric == metric)]
                return sel.sort_values("seed").value.tolist()

            beta = mdf.beta.iloc[0]
            row = [
                f"`{label}`",
                f"{beta:g}" if beta > 0 else "—",
                str(mdf.seed.nunique()),
                _cell(vals("test", "predictor", "error")),
                _cell(vals("test", "mean", "error")),
                _cell(vals("val", "predictor", "error")),
                _cell(vals("test", "predictor", "rate_bits"), scale=1.0, digits=1, suffix=""),
                _cell(vals("train", "training", "seconds"), scale=1.0, digits=0, suffix=""),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
