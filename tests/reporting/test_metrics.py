"""metrics.csv and timing.csv, the tidy frame the report reads, the cells and the summary.md tables."""

import math

import numpy as np
import pandas as pd
import pytest

from vibbench.core.errors import VibbenchError
from vibbench.reporting.metrics import COLUMNS, clean_rows, format_cell, read_metrics, summary_markdown, tidy_metrics, write_metrics


def row(label="mlp_vib", seed=0, metric="error", value=0.01, dataset="mnist", beta=1e-3, **cond) -> dict:
    return {"run_id": "r", "model": label, "label": label, "method": "vib", "backbone": "mlp", "beta": beta, "seed": seed,
            "dataset": dataset, "metric": metric, "value": value} | cond  # fmt: skip


def test_a_cell_is_a_plain_value_for_one_seed_and_mean_with_interval_for_more():
    assert format_cell([0.0123]) == "1.23%"
    assert format_cell([0.01, 0.03]) == "2.00 ± 12.71%"  # t(0.975, 1) = 12.706, sd = 0.01414, n = 2
    assert format_cell([120.4, math.nan], scale=1.0, digits=0, suffix="") == "120"  # NaN is dropped
    assert format_cell([]) == format_cell([math.nan]) == "—"
    # one seed's accuracy on n examples: the value and its Wilson interval (scipy: 28 of 200 -> [9.87%, 19.49%])
    assert format_cell([0.14], digits=1, n=200) == "14.0 [9.9, 19.5]%"
    assert format_cell([0.14, 0.16], digits=1, n=200).startswith("15.0 ± ")  # several seeds: the t-interval


def test_timing_rows_go_to_timing_csv_and_come_back_on_read(tmp_path):
    rows = [row(metric="error", value=0.02, split="test", eval_mode="predictor"), row(metric="seconds", value=12.5, split="train", eval_mode="training")]
    write_metrics(rows, tmp_path / "metrics.csv")
    assert "seconds" not in (tmp_path / "metrics.csv").read_text() and "12.5" in (tmp_path / "timing.csv").read_text()
    back = read_metrics(tmp_path)
    assert list(back.columns) == list(COLUMNS) and sorted(back.metric) == ["error", "seconds"]


def test_a_csv_lacking_columns_is_named(tmp_path):
    pd.DataFrame({"model": ["m"], "value": [1.0]}).to_csv(tmp_path / "metrics.csv", index=False)
    with pytest.raises(VibbenchError, match=r"lacks the columns .*label.*; it was not written by vibbench"):
        read_metrics(tmp_path)


def test_tidy_fills_missing_columns_and_clean_rows_drop_every_other_condition():
    df = tidy_metrics(pd.DataFrame([row(split="test"), row(split="test", attack="pgd", eps=0.1), row(split="test", bin=3), row(corruption="fog", severity=2)]))
    assert set(COLUMNS) <= set(df.columns)
    assert df.ood.tolist() == [""] * 4 and np.isnan(df.eps[0]) and df.eps[1] == 0.1
    assert clean_rows(df).index.tolist() == [0]


def test_summary_has_a_table_per_dataset_with_mean_over_seeds():
    rows = [row(seed=s, value=v, split="test", eval_mode="predictor", dataset=d) for d in ("mnist", "fashion-mnist") for s, v in ((0, 0.01), (1, 0.03))]
    rows.append(row(label="mlp_deterministic", beta=None, method="deterministic", value=0.02, split="test", eval_mode="predictor"))
    rows.append(row(label="mlp_vib:beta=0", beta=0.0, value=0.05, split="test", eval_mode="predictor"))
    text = summary_markdown(tidy_metrics(pd.DataFrame(rows)), title="t")
    assert text.startswith("# t\n") and text.count("| model | beta | seeds | test error |") == 2
    mnist = text[text.index("## mnist") : text.index("## fashion-mnist")]
    assert f"| `mlp_vib` | 0.001 | 2 | {format_cell([0.01, 0.03])} | — | — | — | — |" in mnist
    assert "| `mlp_deterministic` | — | 1 | 2.00% |" in mnist  # not a VIB: no beta
    assert "| `mlp_vib:beta=0` | 0 | 1 | 5.00% |" in mnist  # a VIB at beta 0 is not the same thing
    assert "mlp_deterministic" not in text[text.index("## fashion-mnist") :]
