"""`vibbench compare RUN_A RUN_B ...`: the headline metrics of several runs side by side, per model, with the
differences from the first run and their 95% intervals; a Markdown file and a figure, each written atomically.

Runs are never pooled: each run is one column, and a model's cell in it is the mean over that run's seeds of the
model. The headline metrics: clean test error, worst-case robust accuracy at each norm and budget, ECE (before
temperature scaling) and OOD AUROC (maximum softmax probability). The interval of a difference (run X - run A):

- a model with one seed in both runs:
  - worst-case robust accuracy on the same test images (the runs' evaluation_set.json agree): paired, from the
    per-image outcomes metrics.csv keeps (`worst_case_radius`): Newcombe's square-and-add interval for paired
    proportions and the exact McNemar p-value;
  - otherwise a proportion (clean error; worst case on different images): Newcombe's hybrid score interval for
    independent proportions. For the clean error of two runs on the same images this is conservative: metrics.csv
    keeps no per-image clean outcome to pair;
  - AUROC: the normal interval from Hanley & McNeil's standard errors, taken as independent (conservative when the
    runs scored the same images);
  - ECE: none (it is not a proportion, and metrics.csv keeps no per-image data to bootstrap);
- two or more seeds in both runs: the Welch t-interval over the seeds' values;
- one seed in one run and several in the other: none.

Runs of different datasets or evaluation sets (different test images) are refused unless `allow_different`; their
differences then use the unpaired intervals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vibbench.core.atomic import atomic_write_text
from vibbench.core.errors import VibbenchError
from vibbench.core.hashing import stable_hash
from vibbench.reporting.figures import NORM_TITLES, save_figure, styled
from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.metrics import clean_rows, format_cell, model_order, read_metrics, tidy_metrics
from vibbench.reporting.stats import Z95, auroc_se, mcnemar_exact, newcombe_interval, newcombe_paired_interval, welch_interval

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Run:
    """One run folder as compare reads it: its metrics (checked, typed), config.json and evaluation_set.json."""

    letter: str
    folder: Path
    df: pd.DataFrame
    config: dict
    eval_set: dict | None
    run_id: str
    datasets: tuple[str, ...]

    @property
    def n_test(self) -> int | None:
        """How many test images the clean metrics measured (evaluation_set.json's test_size, else config.json's)."""
        if self.eval_set and isinstance(self.eval_set.get("test_size"), int):
            return self.eval_set["test_size"]
        n = (self.config.get("train") or {}).get("max_eval_examples")
        return n if isinstance(n, int) and not isinstance(n, bool) else None


def _json(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VibbenchError(f"cannot read the {what} {path}: {exc}; the run folder is damaged") from None
    if not isinstance(doc, dict):
        raise VibbenchError(f"the {what} {path} is not a JSON object; the run folder is damaged")
    return doc


def read_run(folder: Path, letter: str) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise VibbenchError(f"{folder} is not a folder: give the output folders of `vibbench run` or `vibbench eval`")
    df = tidy_metrics(read_metrics(folder))
    config = _json(folder / "config.json", "run config") or {}
    eval_set = _json(folder / "evaluation_set.json", "evaluation set")
    run_ids = [r for r in pd.unique(df.run_id) if r]
    run_id = run_ids[0] if run_ids else str(config.get("run_id") or folder.name)
    datasets = tuple(d for d in pd.unique(df.dataset) if d)
    return Run(letter, folder, df, config, eval_set, run_id, datasets)


def _set_difference(a: dict, b: dict) -> str | None:
    """How two evaluation_set.json records differ, in words; None if they name the same images."""
    if a.get("test_size") != b.get("test_size"):
        return f"a test split of {a.get('test_size')} vs {b.get('test_size')} images"
    if a.get("seed") != b.get("seed"):
        return f"evaluation set seed {a.get('seed')} vs {b.get('seed')}"
    sa, sb = a.get("sizes") or {}, b.get("sizes") or {}
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            return f"{key.replace('_', ' ')} on {sa.get(key, 'no')} vs {sb.get(key, 'no')} images"
    if a.get("indices") != b.get("indices"):
        return "different test images (indices)"
    return None


def difference_of_sets(a: Run, b: Run) -> str | None:
    """Why runs a and b did not measure the same test images of the same dataset, or None if they did."""
    if a.datasets != b.datasets:
        return f"different datasets ({', '.join(a.datasets) or '?'} vs {', '.join(b.datasets) or '?'})"
    if a.eval_set is not None and b.eval_set is not None:
        return _set_difference(a.eval_set, b.eval_set)
    if a.n_test is not None and b.n_test is not None and a.n_test != b.n_test:
        return f"a test split of {a.n_test} vs {b.n_test} images"
    return None


# ---------------------------------------------------------------------------------------------
# the headline metrics of one run


@dataclass
class Cell:
    """One model's headline metric in one run: its value per seed, the examples behind it, and where kept the
    per-image outcomes (seed -> boolean Series indexed by test-set index)."""

    values: dict[int, float]
    n: int | None = None
    outcomes: dict[int, pd.Series] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    key: tuple
    title: str
    kind: str  # "proportion", "auroc" or "other"
    short: str = ""  # the figure's label


def _per_seed(sel: pd.DataFrame) -> dict[int, float]:
    sel = sel[sel.value.notna()]
    return {int(s): float(v) for s, v in sel.groupby("seed")["value"].mean().items()}


def headline_cells(run: Run) -> tuple[list[Metric], dict[tuple[str, tuple], Cell]]:
    """(the headline metrics the run has, in table order; (model label, metric key) -> its cell)."""
    df = run.df
    metrics: list[Metric] = []
    cells: dict[tuple[str, tuple], Cell] = {}

    def add(metric: Metric, sel: pd.DataFrame, n=None, outcomes=None) -> None:
        for label, g in sel.groupby("label", sort=False):
            values = _per_seed(g)
            if values:
                sizes = set(g.n.dropna().astype(int))
                cells[(label, metric.key)] = Cell(values, n if n is not None else (sizes.pop() if len(sizes) == 1 else None), (outcomes or {}).get(label, {}))
        if metric not in metrics and any(k == metric.key for _, k in cells):
            metrics.append(metric)

    c = clean_rows(df)
    add(Metric(("clean",), "clean test error (%, ↓)", "proportion", "clean error"), c[(c.split == "test") & (c.eval_mode == "predictor") & (c.metric == "error")], n=run.n_test)
    wc = df[(df.attack == "worst_case") & (df.metric == "robust_accuracy") & df.eps.notna()]
    radius = df[(df.attack == "worst_case") & (df.metric == "worst_case_radius")]
    for norm in [n for n in NORM_TITLES if n in set(wc.norm)]:
        r = radius[radius.norm == norm]
        for eps in sorted(set(wc[wc.norm == norm].eps)):
            outcomes = {
                label: {int(s): gs.set_index(gs.bin.astype(int)).value >= eps - 1e-9 for s, gs in g.groupby("seed")}
                for label, g in r.groupby("label", sort=False)
            }
            sel = wc[(wc.norm == norm) & np.isclose(wc.eps, eps, rtol=0, atol=1e-9)]
            add(Metric(("worst_case", norm, round(eps, 9)), f"worst-case robust accuracy, {NORM_TITLES[norm]} ε={eps:g} (%, ↑)", "proportion", f"worst case {NORM_TITLES[norm]} ε={eps:g}"), sel, outcomes=outcomes)
    cal = df[(df.calibration == "none") & (df.eval_mode == "predictor") & (df.split == "test") & (df.metric == "ece") & df.bin.isna()]
    add(Metric(("ece",), "ECE, test, before temperature scaling (%, ↓)", "other", "ECE"), cal)
    ood = df[(df.score == "msp") & (df.metric == "auroc")]
    for name in pd.unique(ood.ood):
        add(Metric(("auroc", name), f"OOD AUROC against {name}, max. softmax probability (%, ↑)", "auroc", f"AUROC vs {name}"), ood[ood.ood == name], n=run.n_test)
    return metrics, cells


# ---------------------------------------------------------------------------------------------
# differences


@dataclass(frozen=True)
class Difference:
    value: float  # X - A, a fraction
    low: float = math.nan
    high: float = math.nan
    p: float | None = None  # McNemar's, paired proportions only
    method: str = "— (none for one seed)"


def difference(metric: Metric, a: Cell, x: Cell, paired: bool) -> Difference:
    """X - A for one model and metric, with its 95% interval (see the module docstring for which)."""
    va, vx = list(a.values.values()), list(x.values.values())
    d = float(np.mean(vx) - np.mean(va))
    if len(va) >= 2 and len(vx) >= 2:
        return Difference(d, *welch_interval(va, vx), method="Welch t over seeds")
    if len(va) != 1 or len(vx) != 1:
        return Difference(d, method="none: one seed in one run, several in the other")
    if metric.kind == "proportion":
        (sa, oa), (sx, ox) = next(iter(a.outcomes.items()), (None, None)), next(iter(x.outcomes.items()), (None, None))
        if paired and oa is not None and ox is not None and len(oa) == len(ox) and set(oa.index) == set(ox.index):
            ox = ox.reindex(oa.index)
            both, only_a, only_x = int((oa & ox).sum()), int((oa & ~ox).sum()), int((~oa & ox).sum())
            neither = len(oa) - both - only_a - only_x
            d = (only_x - only_a) / len(oa)
            return Difference(d, *newcombe_paired_interval(both, only_a, only_x, neither), p=mcnemar_exact(only_x, only_a), method="paired Newcombe, exact McNemar")
        if a.n and x.n:
            return Difference(d, *newcombe_interval(round(va[0] * a.n), a.n, round(vx[0] * x.n), x.n), method="Newcombe, unpaired")
    if metric.kind == "auroc" and a.n and x.n:
        half = Z95 * math.hypot(auroc_se(va[0], a.n, a.n), auroc_se(vx[0], x.n, x.n))
        return Difference(d, d - half, d + half, method="Hanley-McNeil, unpaired")
    return Difference(d)


def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def _difference_cell(diff: Difference | None) -> str:
    if diff is None:
        return "—"
    text = _points(diff.value)
    if not math.isnan(diff.low):
        text += f" [{_points(diff.low)}, {_points(diff.high)}]"
    if diff.p is not None:
        text += f" p={diff.p:.2g}"
    return text


# ---------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Comparison:
    runs: list[Run]
    metrics: list[Metric]
    labels: list[str]
    cells: list[dict]  # per run: (label, key) -> Cell
    paired: list[bool]  # per run after the first: same test images as run A
    why_unpaired: list[str | None]
    diffs: dict = field(default_factory=dict)  # (run index, label, key) -> Difference


def compare_runs(folders: list[Path], *, allow_different: bool = False) -> Comparison:
    """Read and check the run folders (the first is the reference A) and compute every difference from A."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise VibbenchError("compare needs at least two run folders: vibbench compare DIR_A DIR_B [DIR_C ...]")
    if len(folders) > len(LETTERS):
        raise VibbenchError(f"compare sets at most {len(LETTERS)} runs side by side, got {len(folders)}")
    seen: dict[Path, Path] = {}
    for f in folders:
        key = f.resolve()
        if key in seen:
            raise VibbenchError(f"{f} is given twice: a run compared with itself differs by nothing")
        seen[key] = f
    runs = [read_run(f, LETTERS[i]) for i, f in enumerate(folders)]
    a = runs[0]
    why = [difference_of_sets(a, x) for x in runs[1:]]
    for x, reason in zip(runs[1:], why):
        if reason and not allow_different:
            raise VibbenchError(
                f"runs {a.folder} ({a.run_id}) and {x.folder} ({x.run_id}) did not measure the same test images: {reason}. Their numbers "
                "are not comparable as they stand; pass --allow-different to set them side by side anyway (unpaired intervals)"
            )
    per_run = [headline_cells(r) for r in runs]
    metrics: list[Metric] = []
    for ms, _ in per_run:
        metrics += [m for m in ms if m not in metrics]
    labels: list[str] = []
    for r in runs:
        labels += [lab for lab in model_order(r.df) if lab not in labels]
    comp = Comparison(runs, metrics, labels, [c for _, c in per_run], [w is None for w in why], why)
    for i in range(1, len(runs)):
        for label in labels:
            for m in metrics:
                ca, cx = comp.cells[0].get((label, m.key)), comp.cells[i].get((label, m.key))
                if ca is not None and cx is not None:
                    comp.diffs[(i, label, m.key)] = difference(m, ca, cx, comp.paired[i - 1])
    return comp


def _value_cell(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    return format_cell([cell.values[s] for s in sorted(cell.values)])


def _runs_table(comp: Comparison) -> list[str]:
    rows = []
    for r in comp.runs:
        seeds = sorted({int(s) for s in r.df.seed.dropna()})
        ev = r.eval_set
        images = "—" if not ev else f"seed {ev.get('seed')}, " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (ev.get("sizes") or {}).items())
        rows.append([
            r.letter, f"`{r.run_id}`", f"`{r.folder}`", ", ".join(r.datasets) or "—", str(r.config.get("profile") or "—"),
            ", ".join(map(str, seeds)) or "—", str(len(model_order(r.df))), str(r.n_test or "—"), images,
        ])  # fmt: skip
    return markdown_table(["run", "run id", "folder", "dataset", "profile", "seeds", "models", "test images", "evaluation set"], rows)


def comparison_markdown(comp: Comparison, figure: str | None = None) -> str:
    a = comp.runs[0]
    others = comp.runs[1:]
    lines = [f"# vibbench compare: {' vs '.join(r.run_id for r in comp.runs)}", "", *_runs_table(comp), ""]
    for x, paired, why in zip(others, comp.paired, comp.why_unpaired):
        if paired:
            lines.append(f"- {x.letter} and {a.letter} measured the same test images: worst-case differences are paired image by image.")
        else:
            lines.append(f"- {x.letter} and {a.letter} measured different test images ({why}), compared anyway (--allow-different): every interval is unpaired.")
    lines += [
        "",
        "Each column is one run, never pooled with another; with several seeds of a model in a run its cell is the mean "
        "over them (± half-width of the 95% t-interval). A difference is the later run minus run A in percentage points, "
        "with its 95% interval in brackets and, for paired proportions, the exact McNemar p-value; the last column names "
        "the interval (the module docstring of vibbench/reporting/compare.py says when each applies). ↓: lower is better; ↑: higher.",
        "",
    ]
    header = ["model", "metric"] + [f"{r.letter}" for r in comp.runs] + [f"{x.letter} − {a.letter}" for x in others] + ["interval"]
    rows = []
    for label in comp.labels:
        for m in comp.metrics:
            cells = [c.get((label, m.key)) for c in comp.cells]
            if all(c is None for c in cells):
                continue
            diffs = [comp.diffs.get((i, label, m.key)) for i in range(1, len(comp.runs))]
            methods = list(dict.fromkeys(d.method for d in diffs if d is not None))
            rows.append([f"`{label}`", m.title] + [_value_cell(c) for c in cells] + [_difference_cell(d) for d in diffs] + ["; ".join(methods) or "—"])
    lines += markdown_table(header, rows) if rows else ["No headline metric in any of the runs."]
    if not comp.diffs:
        lines += ["", "No model has a headline metric in run A and another run: there is no difference to show."]
    if figure:
        lines += ["", f"![Differences from run {a.letter} with 95% intervals]({figure}.png)", "", f"*Differences from run {a.letter} (points) with their 95% intervals.* ([PDF]({figure}.pdf))"]
    return "\n".join(lines) + "\n"


@styled
def comparison_figure(comp: Comparison) -> Figure | None:
    """One panel per later run: each model's difference from run A per headline metric (points) with its 95% interval."""
    panels = [i for i in range(1, len(comp.runs)) if any(k[0] == i for k in comp.diffs)]
    if not panels:
        return None
    keys = [(label, m) for label in comp.labels for m in comp.metrics if any((i, label, m.key) in comp.diffs for i in panels)]
    fig = Figure(figsize=(7.5 * len(panels), 0.9 + 0.28 * len(keys)), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = np.arange(len(keys))[::-1]
    for ax, i in zip(axes, panels):
        for yy, (label, m) in zip(y, keys):
            d = comp.diffs.get((i, label, m.key))
            if d is None:
                continue
            err = None if math.isnan(d.low) else [[100 * (d.value - d.low)], [100 * (d.high - d.value)]]
            ax.errorbar([100 * d.value], [yy], xerr=err, fmt="o", color="C0" if err is not None else "0.5", capsize=3, ms=4)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"{comp.runs[i].letter} − {comp.runs[0].letter} (points)")
        ax.set_title(f"{comp.runs[i].run_id} − {comp.runs[0].run_id}", fontsize="small")
    axes[0].set_yticks(y, [f"{label}: {m.short}" for label, m in keys], fontsize="x-small")
    return fig


def write_comparison(folders: list[Path], out: Path | None = None, *, allow_different: bool = False) -> Path:
    """Compare the runs in `folders` (`compare_runs`) and write the Markdown to `out` (default: results/compare-<hash
    of the run ids>.md) and its figure beside it (same name, .png and .pdf), the figure first, each atomically.
    Returns the Markdown file's path."""
    comp = compare_runs(folders, allow_different=allow_different)
    out = Path(out) if out is not None else Path("results") / f"compare-{stable_hash([r.run_id for r in comp.runs])[:10]}.md"
    if out.suffix != ".md":
        raise VibbenchError(f"the comparison is Markdown: give a FILE.md to --out, got {out}")
    fig = comparison_figure(comp)
    stem = out.stem
    if fig is not None:
        save_figure(fig, out.parent, stem)
    else:
        for suffix in (".png", ".pdf"):
            out.with_suffix(suffix).unlink(missing_ok=True)  # a stale figure of an earlier comparison
    atomic_write_text(out, comparison_markdown(comp, stem if fig is not None else None))
    return out
