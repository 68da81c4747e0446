"""The metrics table: its tidy schema, metrics.csv and timing.csv, the typed frame reports read, and the
summary.md tables.

Values in data files are floats (accuracy as a fraction); rounding, percent and +- only in
rendered Markdown (`format_cell`).
"""

from __future__ import annotations

import io
import math
import warnings
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
               draws), robust_accuracy_all_draws, judge_disagreement, robust_accuracy_shared (a row's expected robust accuracy
               on the first n images only: those it shares with a shorter row, as the masking checks compare them),
               large_eps_accuracy, median_adv_distance (inf: most
               images not broken), attack_success_rate, zero_grad_fraction; worst_case_radius per image (bin = its
               test-set index; value = the largest budget at which it is robust, 0 if none); flag_<check> (0/1) with
               attack checks per model, and with value 1 on each row a check doubts (evaluation/masking.py FLAGS)
- calibration: split test, eval_mode predictor|mean, calibration none|temperature; metric ece, mce, adaptive_ece,
               nll, brier, accuracy, temperature; reliability diagram: bin (0..14), metric reliability_count,
               reliability_accuracy, reliability_confidence, reliability_lower, reliability_upper
- ood:         split test, ood (the OOD dataset), score msp|entropy|rate; metric auroc, aupr, fpr95; ROC curve: bin (point index),
               metric roc_fpr, roc_tpr
- shift:       split test, eval_mode predictor, corruption, severity (1..5); metric accuracy, ece, nll
- paper protocol (evaluation/paper_protocol.py): split test, eval_mode predictor, attack paper_fgs (norm linf, eps; 0 =
               clean) or paper_cw (norm l2, n = images attacked), path paper|honest; metric adversarial_accuracy,
               adversarial_accuracy_all_draws (honest), targeted_success_rate, targeted_success_rate_any_draw (honest),
               mean_success_distance (L2, over the successes)
- embedding:   a K = 2 VIB only: split test, eval_mode predictor, bin (test index), metric embedding_mu_0/1,
               embedding_std_0/1, embedding_label; and (no bin, n) error_one_sample: test error with one draw of z
- evaluation time (timing.csv; evaluation/timing.py): split test, eval_mode the section's name, metric seconds: one
               row per section, and per attack and path (attack, path, norm) in robustness and paper_protocol
"""


TIMING_METRICS = ("seconds", "examples_per_second")
"""Measurements of the machine, not of the models: kept out of metrics.csv (in timing.csv, same schema),
so that metrics.csv of the same config and seed is bit-identical from run to run."""

NUMERIC_COLUMNS = ("beta", "seed", "eps", "severity", "bin", "n", "value")
STRING_COLUMNS = tuple(c for c in COLUMNS if c not in NUMERIC_COLUMNS)
"""How `tidy_metrics` types the columns: numbers as float (NaN where empty), the rest as str ("" where empty)."""
CONDITIONS_BEYOND_CLEAN = ("attack", "path", "norm", "corruption", "ood", "score", "calibration")


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """The measurement records `rows` as the metrics table: the columns of COLUMNS in order, counts as integers."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("severity", "bin", "n"):
        df[col] = df[col].astype("Int64")
    return df


def write_metrics(rows: list[dict], path: Path) -> pd.DataFrame:
    """Write metrics.csv, and the timing rows to timing.csv beside it; returns all rows."""
    df = metrics_frame(rows)
    timing = df.metric.isin(TIMING_METRICS)
    atomic_write_text(path, df[~timing].to_csv(index=False, float_format="%.10g"))
    atomic_write_text(Path(path).with_name("timing.csv"), df[timing].to_csv(index=False, float_format="%.10g"))
    return df


FRACTION_METRICS = (
    "accuracy", "error", "robust_accuracy", "robust_accuracy_all_draws", "judge_disagreement", "robust_accuracy_shared", "large_eps_accuracy",
    "attack_success_rate", "zero_grad_fraction", "ece", "mce", "adaptive_ece", "auroc", "aupr", "fpr95", "roc_fpr",
    "roc_tpr", "reliability_accuracy", "reliability_confidence", "reliability_lower", "reliability_upper",
    "adversarial_accuracy", "adversarial_accuracy_all_draws", "targeted_success_rate", "targeted_success_rate_any_draw",
    "error_one_sample",
)  # fmt: skip
"""Metrics that are fractions: a value outside [0, 1] (an accuracy of 5.0 would print as 500.00%) is refused on read,
as is any flag_<check> other than 0 or 1. NaN (an empty cell) is an absent measurement and passes."""

NONNEGATIVE_METRICS = (
    "seconds", "examples_per_second", "reliability_count", "temperature", "median_adv_distance", "worst_case_radius",
    "mean_success_distance", "embedding_std_0", "embedding_std_1", "embedding_label",
)  # fmt: skip
"""Metrics that cannot be negative (they may be infinite: median_adv_distance when most images resist)."""

RANGE_TOLERANCE = 1e-9
"""How far a fraction may lie outside [0, 1] (or a non-negative metric below 0) by rounding."""


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv of a run folder, with timing.csv's rows appended when present, checked (`check_metrics`): a file
    that is not UTF-8 text, ends in the middle of a row, or holds a row vibbench would not write is one VibbenchError."""
    return read_metrics_and_notes(run_dir)[0]


def read_metrics_and_notes(run_dir: Path, *, allow_partial: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """`read_metrics`, and with allow_partial a file cut off in the middle of its last row is read without that row
    instead of refused; the notes then say so (one line each), for the report's top."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise VibbenchError(f"{run_dir} has no metrics.csv: point to a folder written by `vibbench run`")
    files = [path] + ([Path(run_dir) / "timing.csv"] if (Path(run_dir) / "timing.csv").is_file() else [])
    frames, notes = [], []
    for file in files:
        frame, note = _read_csv(file, allow_partial)
        frames.append(frame)
        notes += [note] if note else []
    for frame, file in zip(frames, files):
        missing = set(COLUMNS) - set(frame.columns)
        if missing:
            raise VibbenchError(f"{file} lacks the columns {', '.join(sorted(missing))}; it was not written by vibbench")
        check_metrics(frame, str(file))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    _check_one_run(df, " and ".join([str(path)] + [f.name for f in files[1:]]))
    return df, notes


def _read_csv(path: Path, allow_partial: bool) -> tuple[pd.DataFrame, str | None]:
    """One metrics file as pandas reads it, after the checks pandas would turn into a traceback or a silent guess."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VibbenchError(
            f"{path} is not text: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 (a binary or damaged file); "
            f"write it again with `vibbench eval --config {path.parent / 'options.json'}`, or restore a copy"
        ) from None
    note = None
    if not text.strip():
        raise VibbenchError(f"{path} is empty; it was not written by vibbench (or not completely)")
    if not text.endswith("\n"):  # vibbench ends every row with a newline: this file was cut off within its last row
        if not allow_partial:
            raise VibbenchError(
                f"{path} ends in the middle of a row: it was cut short (an interrupted copy?), and its last value may be "
                "cut too; copy it again, or pass --allow-partial to report without that row"
            )
        text = text[: text.rfind("\n") + 1]
        note = f"{path.name} was cut off within its last row, which is left out"
    try:
        with warnings.catch_warnings():
            # index_col=False: a first row with one field too many would otherwise silently become the index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), index_col=False)
    except pd.errors.ParserWarning:
        raise VibbenchError(f"{path} is not a metrics table vibbench wrote: its first row has more fields than its header") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())
        raise VibbenchError(f"{path} is not a metrics table vibbench wrote: {reason}") from None
    return frame, note


def _where(df: pd.DataFrame, i, source: str) -> str:
    """'metrics.csv line 12 (mlp_vib, seed 0, error)': where row `i` of a frame read from `source` is."""
    seed = pd.to_numeric(pd.Series([df.at[i, "seed"]]), errors="coerce")[0]
    parts = [df.at[i, "label"], f"seed {seed:g}" if pd.notna(seed) else None, df.at[i, "metric"]]
    what = ", ".join(str(v) for v in parts if isinstance(v, str) and v.strip())
    return f"{source} line {df.index.get_loc(i) + 2}" + (f" ({what})" if what else "")


def check_metrics(df: pd.DataFrame, source: str = "metrics.csv") -> None:
    """Refuse, in one line each, what vibbench never writes and a report would show as a wrong number or a silent gap:
    a row without its label or metric, a number column holding text, rows of several run ids, a row repeated (the same
    model, seed, conditions and metric), a fraction outside [0, 1] (FRACTION_METRICS), a flag other than 0 or 1, a
    negative time, count, temperature or distance (NONNEGATIVE_METRICS)."""
    if df.empty:
        return
    df = df.reset_index(drop=True)  # line numbers are positions
    for col in ("label", "metric"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            i = empty.idxmax()
            raise VibbenchError(f"{_where(df, i, source)} has no {col}: a row with missing fields ({_rows(empty)})")
    for col in NUMERIC_COLUMNS:
        raw = df[col]
        number = pd.to_numeric(raw, errors="coerce")
        text = raw.astype(str).str.strip()
        bad = raw.notna() & number.isna() & (text != "")
        if bad.any():
            i = bad.idxmax()
            raise VibbenchError(f"{_where(df, i, source)}: {col} {raw[i]!r} is not a number ({_rows(bad)}); vibbench writes numbers or leaves the cell empty")
    _check_one_run(df, source)
    key = list(ID_COLUMNS + CONDITION_COLUMNS + ("metric",))
    repeated = df.duplicated(key, keep="first")
    if repeated.any():
        j = repeated.idxmax()
        group = df.groupby(key, dropna=False, sort=False).ngroup()
        first = group.index[group == group[j]][0]
        raise VibbenchError(
            f"{_where(df, j, source)} repeats line {df.index.get_loc(first) + 2}: the same model, seed, conditions and metric "
            f"({_rows(repeated, 'repeated')}); a report would average them silently. Were two files pasted together? "
            "Keep one row per measurement"
        )
    value = pd.to_numeric(df["value"], errors="coerce")
    metric = df["metric"].astype(str)
    is_flag = metric.str.startswith("flag_")
    fraction = metric.isin(FRACTION_METRICS)
    out = (fraction & ((value < -RANGE_TOLERANCE) | (value > 1 + RANGE_TOLERANCE))) | (is_flag & value.notna() & ~value.isin([0.0, 1.0]))
    if out.any():
        i = out.idxmax()
        allowed = "0 or 1" if is_flag[i] else "a fraction in [0, 1] (0.9824 for 98.24%)"
        raise VibbenchError(f"{_where(df, i, source)}: value {float(value[i])!r} is out of range ({_rows(out)}); {df.at[i, 'metric']} is {allowed}")
    negative = metric.isin(NONNEGATIVE_METRICS) & (value < -RANGE_TOLERANCE)
    if negative.any():
        i = negative.idxmax()
        raise VibbenchError(f"{_where(df, i, source)}: value {float(value[i])!r} is negative ({_rows(negative)}); {df.at[i, 'metric']} is >= 0")


def _rows(mask: pd.Series, kind: str = "such") -> str:
    n = int(mask.sum())
    return f"{n} {kind} row{'s' if n != 1 else ''}"


def _check_one_run(df: pd.DataFrame, source: str) -> None:
    run_ids = [r for r in pd.unique(df["run_id"].dropna().astype(str)) if r.strip()]
    if len(run_ids) > 1:
        shown = ", ".join(run_ids[:4]) + (f" and {len(run_ids) - 4} more" if len(run_ids) > 4 else "")
        raise VibbenchError(
            f"{source}: rows of {len(run_ids)} runs in one folder ({shown}), but a report is of one run. Keep each run in its own "
            "folder, and compare runs side by side instead of pooling them: `vibbench compare DIR_A DIR_B`"
        )


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
