"""Where a run's evaluation time went: the timing rows of the evaluation sections (evaluation/timing.py) as tables
of the report's time section, per model and section, and per attack and path."""

from __future__ import annotations

import pandas as pd

from vibbench.evaluation.sections import SECTIONS
from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.metrics import model_order

PATH_ORDER = ("direct", "mean", "eot", "all")


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def evaluation_time_lines(d: pd.DataFrame) -> list[str]:
    """The evaluation-time tables of the tidy frame `d` (timing.csv's rows included), or none when it holds no
    evaluation timing (a run from before they were recorded, or one with --no-eval)."""
    t = d[(d.metric == "seconds") & d.eval_mode.isin(list(SECTIONS)) & d.value.notna()]
    if t.empty:
        return []
    totals = t[t.attack == ""]
    sections = [s for s in SECTIONS if s in set(totals.eval_mode)]
    rows = []
    for lab in model_order(totals):
        m = totals[totals.label == lab]
        per = m.groupby("eval_mode").value.sum()
        rows.append([f"`{lab}`", str(m.seed.nunique()), *(_seconds(per[s]) if s in per else "–" for s in sections), _seconds(per.sum())])
    lines = [
        "**Evaluation time** (s, summed over seeds), per model and section. A section read from the cache keeps the "
        "time it took when it was measured.",
        "",
        *markdown_table(["model", "seeds", *sections, "total"], rows),
    ]
    parts = t[t.attack != ""]
    if not parts.empty:
        paths = [p for p in PATH_ORDER if p in set(parts.path)] + sorted(set(parts.path) - set(PATH_ORDER))
        grid = parts.groupby(["eval_mode", "attack", "path"], sort=False).value.sum().to_dict()
        keys = list(dict.fromkeys((s, a) for s, a, _ in grid))
        rows = [
            [s, f"`{a}`", *(_seconds(grid[(s, a, p)]) if (s, a, p) in grid else "–" for p in paths), _seconds(sum(grid.get((s, a, p), 0.0) for p in paths))]
            for s, a in keys
        ]
        lines += [
            "",
            "**Attack time** (s, summed over models and seeds), per attack and path; `checks` are the gradient and "
            "large-budget checks of a path, `all` the paper protocol's attacks with their honest counterparts.",
            "",
            *markdown_table(["section", "attack", *paths, "total"], rows),
        ]
    total = totals.value.sum()
    shares = totals.groupby("eval_mode").value.sum().sort_values(ascending=False)
    biggest = ", ".join(f"{s} {100 * v / total:.0f}%" for s, v in shares.items() if total > 0)
    lines += ["", f"Total evaluation time over all models and seeds: {total:.0f} s ({total / 60:.1f} min): {biggest}."]
    if not parts.empty and total > 0:
        eot = parts[parts.path == "eot"].value.sum()
        if eot > 0:
            lines[-1] += f" Attacks on the EOT path: {eot:.0f} s ({100 * eot / total:.0f}%)."
    return lines
