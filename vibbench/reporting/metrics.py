"""The metrics table: its tidy schema, metrics.csv and timing.csv, the typed frame reports read, and the
summary.md tables.

Values in data files are floats (accuracy as a fraction); rounding, percent and +- only in
rendered Markdown (`format_cell`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vibbench.core.atomic import atomic_write_text
from vibbench.core.errors import VibbenchError
from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.stats import mean_ci95, wilson_interval

ID_COLUMNS = ("run_id", "model", "label", "method", "backbone", "beta", "seed", "dataset")
CONDITION_COLUMNS = ("split", "eval_mode", "attack", "path", "norm", "eps", "corruption", "severity", "ood", "score", "calibration", "bin", "n")
COLUMNS = ID_COLUMNS + CONDITION_COLUMNS + ("metric", "value")
"""The tidy schema of metrics.csv: one row per measurement; a condition column is empty where it does not apply.

- clean:       split val|test, eval_mode predictor|mean; metric accuracy, error, nll (nats), rate_bits, izy_bits
- training:    split train, eval_mode training; metric loss, ce, kl (nats), seconds, examples_per_second
- robustness:  split test, eval_mode predictor, attack (fgsm, pgd, ..., worst_case, clean, checks, gradient),
               path (direct|mean|eot|all), norm (linf|l2), eps, n; metric robust_accuracy (expected over the judge's
               draws), robust_accuracy_all_draws, judge_disagreement, large_eps_accuracy, median_adv_distance (inf: most
               images not broken), attack_success_rate, zero_grad_fraction; worst_case_radius per image (bin = its
               test-set index; value = the largest budget at which it is robust, 0 if none); flag_<check> (0/1) with
               attack checks per model, and with value 1 on each row a check doubts (evaluation/masking.py FLAGS)
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

NUMERIC_COLUMNS = ("beta", "seed", "eps", "severity", "bin", "n", "value")
STRING_COLUMNS = tuple(c for c in COLUMNS if c not in NUMERIC_COLUMNS)
"""How `tidy_metrics` types the columns: numbers as float (NaN where empty), the rest as str ("" where empty)."""
CONDITIONS_BEYOND_CLEAN = ("attack", "path", "norm", "corruption", "ood", "score", "calibration")


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


def format_cell(values: list[float], scale: float = 100.0, digits: int = 2, suffix: str = "%", n: int | None = None) -> str:
    """A Markdown cell for one measurement over seeds: "mean ± half-width of the 95% t-interval" times `scale`;
    for one value the plain value, or with `n` (a proportion of n examples) the value and its 95% Wilson interval
    "p [low, high]"; "—" for none (NaNs are dropped)."""
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    mean, half = mean_ci95(values)
    if math.isnan(half):
        if n is None:
            return f"{mean * scale:.{digits}f}{suffix}"
        low, high = wilson_interval(round(mean * n), n)
        return f"{mean * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]{suffix}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}{suffix}"


SUMMARY_HEADER = ["model", "beta", "seeds", "test error", "test error (mean mode)", "val error", "rate (bits)", "train time (s)"]


def _summary_row(label: str, mdf: pd.DataFrame) -> list[str]:
    """The summary cells of one model: its label, beta, seed count and errors, rate and train time over seeds."""

    def vals(split, mode, metric):
        sel = mdf[(mdf.split == split) & (mdf.eval_mode == mode) & (mdf.metric == metric)]
        return sel.sort_values("seed").value.tolist()

    beta = mdf.beta.iloc[0]
    return [
        f"`{label}`",
        f"{beta:g}" if mdf.method.iloc[0] == "vib" and not math.isnan(beta) else "—",
        str(mdf.seed.nunique()),
        format_cell(vals("test", "predictor", "error")),
        format_cell(vals("test", "mean", "error")),
        format_cell(vals("val", "predictor", "error")),
        format_cell(vals("test", "predictor", "rate_bits"), scale=1.0, digits=1, suffix=""),
        format_cell(vals("train", "training", "seconds"), scale=1.0, digits=0, suffix=""),
    ]


def summary_markdown(df: pd.DataFrame, title: str = "") -> str:
    """One table per dataset, one row per model; cells are mean ± 95% t-interval over seeds."""
    lines = [f"# {title}" if title else "# Summary", ""]
    lines.append(
        "Test error of the model's predictor (the 12-sample average of softmax probabilities for VIB), "
        "of the mean mode (z = mu), and validation error; rate = E[KL(q(z|x) || N(0, I))] in bits (an upper bound "
        "on I(Z;X)). With several seeds a cell reads mean ± half-width of the 95% t-interval."
    )
    for dataset, ddf in df.groupby("dataset", sort=False):
        rows = [_summary_row(label, mdf) for label, mdf in ddf.groupby("label", sort=False)]
        lines += ["", f"## {dataset}", "", *markdown_table(SUMMARY_HEADER, rows)]
    return "\n".join(lines) + "\n"


def tidy_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with string conditions as str ("" where empty) and numbers as float (NaN where empty).

    Works on a DataFrame straight from `write_metrics` (None, Int64) and on one read back from
    the CSV (all-empty columns come back as float NaN).
    """
    df = df.copy()
    for col in STRING_COLUMNS:
        if col not in df.columns:
            df[col] = ""
        s = df[col].astype(object)
        df[col] = s.where(s.notna(), "").astype(str)
    for col in NUMERIC_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def clean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The clean-evaluation and training rows: no attack, corruption, OOD set, calibration or bin."""
    mask = np.ones(len(df), dtype=bool)
    for col in CONDITIONS_BEYOND_CLEAN:
        mask &= (df[col] == "").to_numpy()
    mask &= df["bin"].isna().to_numpy() & df["severity"].isna().to_numpy()
    return df[mask]


def model_order(df: pd.DataFrame) -> list[str]:
    """The model labels in the order they first appear in `df`."""
    return list(pd.unique(df["label"]))
