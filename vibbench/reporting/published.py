"""The report's section "Published references (Table 1)": this run's clean MNIST test errors beside the published
ones (`vibbench/reporting/references.py`), for a run that follows the paper's protocol; for any other run the
published numbers are listed for orientation only, with no comparison drawn.

Ours is the test error of the model's predictor from metrics.csv (split test, eval_mode predictor, metric error):
with one seed the value and the 95% Wilson interval of its number of errors over the n test images, with several
seeds the mean and the 95% Student-t interval over seeds. The published values are taken as exact numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.metrics import clean_rows
from vibbench.reporting.references import (
    MNIST_TEST_SIZE,
    PROTOCOL_TEXT,
    REFERENCES,
    Reference,
    comparability,
    references_for,
)
from vibbench.reporting.stats import mean_ci95, wilson_interval


@dataclass(frozen=True)
class Estimate:
    """Our test error in percent and its 95% interval: Wilson over n examples for one seed, t over several seeds."""

    value: float
    low: float
    high: float
    seeds: int
    n: int

    @property
    def text(self) -> str:
        if self.seeds == 1:
            return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]%"
        return f"{self.value:.2f} ± {(self.high - self.low) / 2:.2f}% [{self.low:.2f}, {self.high:.2f}]"


def estimate(errors: list[float], n: int) -> Estimate:
    """Our estimate from one test error (a fraction) per seed, each over `n` test examples."""
    if not errors:
        raise ValueError("estimate needs at least one test error")
    if len(errors) == 1:
        low, high = wilson_interval(round(errors[0] * n), n)
        return Estimate(100 * errors[0], 100 * low, 100 * high, 1, n)
    mean, half = mean_ci95(errors)
    return Estimate(100 * mean, 100 * (mean - half), 100 * (mean + half), len(errors), n)


def placement(published: float, ours: Estimate) -> str:
    """A sentence on where a published value (in percent) lies relative to our 95% interval."""
    interval = f"our 95% interval [{ours.low:.2f}, {ours.high:.2f}]%"
    if ours.low <= published <= ours.high:
        return f"The published {published:.2f}% lies within {interval}."
    side, gap = ("below", ours.low - published) if published < ours.low else ("above", published - ours.high)
    by = f"{gap:.2f} points" if round(gap, 2) > 0 else "less than 0.01 points"
    return f"The published {published:.2f}% lies {by} {side} {interval}."


def _test_errors(d: pd.DataFrame, label: str) -> tuple[list[float], int]:
    """One predictor test error per seed (seed order) of the model `label`, and the test examples behind them."""
    c = clean_rows(d)
    sel = c[(c.label == label) & (c.split == "test") & (c.eval_mode == "predictor") & (c.metric == "error") & c.value.notna()]
    errors = sel.groupby("seed", dropna=False)["value"].mean().tolist() if len(sel) else []
    sizes = set(sel.n.dropna().astype(int)) if "n" in sel else set()
    return errors, sizes.pop() if len(sizes) == 1 else MNIST_TEST_SIZE


def _orientation_table(references: tuple[Reference, ...] = REFERENCES) -> list[str]:
    rows = [[f"`{r.method}`" + (f" (β = {r.beta:g})" if r.beta is not None else ""), f"{r.value:.2f}%", r.source, r.notes] for r in references]
    return markdown_table(["method", "published test error", "source", "notes"], rows)


def published_section(d: pd.DataFrame, ctx: dict, embed=None) -> list[str]:
    """The section's Markdown lines for one dataset's rows `d`; ctx["config"] is config.json as a dict."""
    config = ctx.get("config") or {}
    datasets = [x for x in pd.unique(d.dataset) if x] if len(d) and "dataset" in d else []
    reasons = comparability(config, datasets)
    orientation = ["", "**Published MNIST test errors, for orientation only: not comparable to this run**", "", *_orientation_table()]
    if reasons:
        return [
            f"The published numbers are for the paper's protocol ({PROTOCOL_TEXT}); this run is not comparable to "
            f"them ({'; '.join(reasons)}), so no difference is computed.",
            *orientation,
        ]
    models = config.get("models") if isinstance(config.get("models"), list) else []
    compared = [(m, refs) for m in models if (refs := references_for(m))]
    if not compared:
        return [
            "This run follows the paper's training protocol, but none of its models is one the published numbers are "
            "for (the mlp backbone with K = 256 and one of the five methods; VIB only at β = 1e-3 with 12 draws of z).",
            *orientation,
        ]
    ema = config["train"].get("ema_decay")
    weights = f"the weights' exponential moving average, decay {ema:g}" if isinstance(ema, (int, float)) and ema > 0 else "the trained weights"
    lines = [
        f"This run follows the protocol of the published numbers ({PROTOCOL_TEXT}). Ours is the clean test error of "
        f"the predictor (evaluated with {weights}; for VIB the softmax averaged over 12 draws of z), with one seed "
        "its 95% Wilson interval over the n test images, with several seeds the mean ± half-width of the 95% t-interval "
        "over seeds [its bounds]. The difference is ours minus published, in percentage points. The published values "
        "are single numbers whose own run-to-run spread is not known here. This package trains on the first 50,000 "
        "training images and holds out the last 10,000 for validation.",
        "",
    ]
    rows = []
    for model, refs in compared:
        label = str(model.get("label") or model.get("name"))
        errors, n = _test_errors(d, label)
        ours = estimate(errors, n) if errors else None
        for ref in refs:
            cells = [f"`{label}`", str(len(errors)), str(n) if ours else "—", ours.text if ours else "—", f"{ref.value:.2f}%", ref.source]
            if ours:
                cells += [f"{round(ours.value - ref.value, 2) + 0.0:+.2f}", placement(ref.value, ours)]
            else:
                cells += ["—", "metrics.csv has no clean test error for this model."]
            rows.append(cells)
    header = ["model", "seeds", "n", "ours: test error [95% interval]", "published", "source", "ours − published (points)", "where the published value lies"]
    lines += markdown_table(header, rows)
    notes = {r.source: r.notes for _, refs in compared for r in refs}
    lines += ["", "Sources:", "", *(f"- {source}: {note}." for source, note in notes.items())]
    return lines


__all__ = ["Estimate", "estimate", "placement", "published_section"]
