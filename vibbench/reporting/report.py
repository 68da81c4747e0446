"""The report of a run: report.md and figures/*.png + *.pdf, rebuilt from metrics.csv alone.

`write_report(run_dir)` reads `run_dir/metrics.csv` (and `config.json` / `provenance.json` when
present, for the provenance header) and writes, each file atomically, the figures first and
`report.md` last, so the report never links to a figure that is not there. Sections, in order:
clean accuracy, the published references (Table 1), adversarial robustness, calibration, OOD
detection, distribution shift, the β sweep, training. A section whose measurements are absent says
so in one line. Before writing anything it checks the metrics (`metrics.check_metrics`) and that every model and
seed config.json lists has rows; `allow_partial` reports a folder lacking some, with one line at the top saying so.

Data stay fractions; percent, rounding and "mean ± half-width of the 95% t-interval over seeds"
appear only in the rendered Markdown (`metrics.format_cell`). A cell shows a plain value for one seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from vibbench.core.atomic import atomic_write_text
from vibbench.core.manifest import read_manifest, record_rewritten
from vibbench.evaluation.masking import ACROSS_ROWS, FLAGS
from vibbench.reporting.figures import ATTACK_NAMES, FIGURES, MODE_NAMES, NORM_TITLES, PAPER_PROTOCOL_METRICS, SCORE_NAMES, save_figure
from vibbench.reporting.paper_section import embedding_section, paper_protocol_section
from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.stats import mcnemar_exact
from vibbench.core.errors import VibbenchError
from vibbench.reporting.metrics import (
    TIMING_METRICS,
    check_metrics,
    clean_rows,
    format_cell,
    model_order,
    read_metrics_and_notes,
    summary_markdown,
    tidy_metrics,
)
from vibbench.reporting.published import published_section
from vibbench.reporting.time_section import evaluation_time_lines

SWEEP_EPS = (0.1, 0.3)


# ---------------------------------------------------------------------------------------------
# small Markdown helpers


def _per_seed(sel: pd.DataFrame) -> list[float]:
    """One value per seed (several rows of a seed are averaged), in seed order."""
    sel = sel[sel.value.notna()]
    if sel.empty:
        return []
    return sel.groupby("seed", dropna=False)["value"].mean().tolist()


def _pct(sel: pd.DataFrame, digits: int = 2) -> str:
    return format_cell(_per_seed(sel), digits=digits)


def _pct_n(sel: pd.DataFrame, digits: int = 1) -> str:
    """An accuracy over n examples: with one seed the value and its 95% Wilson interval, with several the mean and
    its t-interval over seeds."""
    sizes = set(sel.n.dropna().astype(int)) if "n" in sel else set()
    return format_cell(_per_seed(sel), digits=digits, n=sizes.pop() if len(sizes) == 1 else None)


def _n(sel: pd.DataFrame) -> str:
    """The number of examples behind `sel`'s rows ("a-b" when they differ)."""
    sizes = sorted(set(sel.n.dropna().astype(int)))
    return "—" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def _image_set(n: int | None, config: dict) -> str:
    """Which test images a section measured: a random draw of the run (its seed in config.json), or, for runs made
    before the evaluation set was drawn at random, the first n."""
    seed = _get(config, "eval", "subset_seed")
    if n is None:
        return "a test subset"
    if seed is None:
        return f"the first {n} test images"
    return f"{n} test images drawn at random (evaluation set seed {seed}; the indices are in evaluation_set.json)"


def _num(sel: pd.DataFrame, digits: int = 3) -> str:
    return format_cell(_per_seed(sel), scale=1.0, digits=digits, suffix="")


def _seeds(sel: pd.DataFrame) -> str:
    return str(sel.seed.nunique())


def _eps(eps: float) -> str:
    return f"ε={eps:g}"


def _not_run(what: str) -> list[str]:
    return [f"*Not run: {what}*"]


def _close(a: pd.Series, b: float) -> pd.Series:
    return pd.Series(np.isclose(a.to_numpy(dtype=float), b, rtol=0, atol=1e-9), index=a.index)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _read_json(path: Path) -> tuple[dict, str | None]:
    if not path.is_file():
        return {}, None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} could not be read ({exc}); its details are missing below"
    return (obj, None) if isinstance(obj, dict) else ({}, f"{path.name} is not a JSON object; its details are missing below")


def _get(obj, *keys, default=None):
    for key in keys:
        if not isinstance(obj, dict) or key not in obj or obj[key] is None:
            return default
        obj = obj[key]
    return obj


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}={_fmt_value(v)}" for k, v in value.items())
    return str(value)


# ---------------------------------------------------------------------------------------------
# provenance header


def _eval_section(config: dict) -> dict:
    ev = _get(config, "eval")
    return ev if isinstance(ev, dict) else {}


def _configured_autoattack_label(config: dict) -> str | None:
    """The AutoAttack label config.json records (under eval, or under eval.attacks), None when absent."""
    ev = _eval_section(config)
    label = ev.get("autoattack_label") or _get(ev, "attacks", "autoattack_label")
    return str(label) if label else None


def _run_id(df: pd.DataFrame, config: dict, prov: dict) -> str:
    run_ids = [r for r in pd.unique(df.run_id) if r] if "run_id" in df else []
    return _get(prov, "run_id") or _get(config, "run_id") or (", ".join(run_ids) if run_ids else "unknown")


def _machine_items(prov: dict) -> list[tuple[str, str]]:
    """(key, value) items of where and when the run ran: date, git commit, device, torch, wall time."""
    items = []
    if _get(prov, "created"):
        items.append(("date", str(prov["created"])))
    commit, dirty = _get(prov, "git", "commit"), _get(prov, "git", "dirty")
    if commit:
        state = {True: "with uncommitted changes", False: "clean"}.get(dirty, "state unknown")
        items.append(("git commit", f"`{str(commit)[:12]}` ({state})"))
    elif prov:
        items.append(("git commit", "unknown (not run from a git checkout)"))
    device = _get(prov, "device_name")
    if device or _get(prov, "device"):
        items.append(("device", " ".join(x for x in (str(device or ""), f"({prov['device']})" if _get(prov, "device") else "") if x)))
    if _get(prov, "versions", "torch"):
        items.append(("torch", str(prov["versions"]["torch"])))
    wall = _get(prov, "wall_seconds")
    if isinstance(wall, (int, float)):
        items.append(("wall time", f"{wall:.0f} s ({wall / 60:.1f} min)"))
    executor = _get(prov, "executor", "name")
    if executor == "processes":
        workers, threads = _get(prov, "executor", "workers"), _get(prov, "executor", "torch_threads_per_job")
        items.append((
            "jobs ran",
            f"in {workers} worker processes at once, {threads} torch thread(s) each (`--executor processes`): the per-job "
            "times of the time section add up to more than the wall time",
        ))  # fmt: skip
    elif executor:
        items.append(("jobs ran", {"local": "one after the other in one process (`--executor local`)", "ray": "as Ray tasks (`--executor ray`)"}.get(executor, f"`{executor}`")))
    arithmetic = _get(prov, "attack_precision")
    if isinstance(arithmetic, dict) and arithmetic.get("setting"):
        items.append(("attack arithmetic", _attack_arithmetic(arithmetic["setting"], arithmetic.get("resolved"))))
    return items


def _attack_arithmetic(setting: str, resolved: str | None) -> str:
    """How the robustness attacks computed: the setting (`--attack-precision`) and what it resolved to."""
    how = {"bf16": "bf16 autocast", "fp32": "fp32"}.get(resolved, "resolved on each machine that ran a job")
    if resolved == "bf16":
        how += " for the gradient attacks; Square (a score-based search), the paper's own attacks and the judge in fp32"
    elif resolved == "fp32" and setting == "auto":
        how += " (this machine has no native bf16)"
    return f"{how} (`--attack-precision {setting}`)"


def _run_items(df: pd.DataFrame, config: dict, prov: dict) -> list[tuple[str, str]]:
    """(key, value) items of what ran: profile, config hash, datasets, seeds, number of models."""
    items = []
    profile = _get(prov, "profile") or _get(config, "profile")
    if profile:
        items.append(("profile", f"`{profile}`"))
    config_hash = _get(prov, "config_hash") or _get(config, "config_hash")
    if config_hash:
        items.append(("config hash", f"`{str(config_hash)[:16]}`"))
    datasets = [d for d in pd.unique(df.dataset) if d]
    if datasets:
        source = _get(prov, "dataset", "source")
        items.append(("dataset", ", ".join(datasets) + (f" (from {source})" if source else "")))
    seeds = sorted(int(s) for s in pd.unique(df.seed.dropna()))
    if seeds:
        items.append(("seeds", ", ".join(map(str, seeds))))
    if len(df):
        items.append(("models", str(len(model_order(df)))))
    return items


def _settings_items(config: dict) -> list[tuple[str, str]]:
    """(key, value) items of the training and evaluation settings in config.json."""
    items = []
    train = _get(config, "train")
    if isinstance(train, dict):
        keys = ("epochs", "batch_size", "lr", "max_train_examples", "max_eval_examples", "eval_samples")
        items.append(("training", ", ".join(f"{k}={_fmt_value(train[k])}" for k in keys if k in train)))
    ev = _eval_section(config)
    if not ev:
        return items
    attacks = ev.get("attacks")
    if isinstance(attacks, dict):
        items.append(("attack settings", _fmt_value(attacks)))
    elif "attacks" in ev and attacks is None:
        items.append(("attack settings", "robustness not evaluated"))
    rest = {k: v for k, v in ev.items() if k not in ("attacks", "autoattack_label")}
    if rest:
        items.append(("evaluation settings", _fmt_value(rest)))
    if _configured_autoattack_label(config):
        items.append(("AutoAttack", _configured_autoattack_label(config)))
    return items


def _provenance_lines(df: pd.DataFrame, config: dict, prov: dict, problems: list[str], partial: str | None = None) -> list[str]:
    """The report's header: its title, what is missing (a partial report), the run's provenance as a list, notes on
    unreadable files, how to read a cell."""
    run_id = _run_id(df, config, prov)
    items = [("run id", f"`{run_id}`"), *_machine_items(prov), *_run_items(df, config, prov), *_settings_items(config)]
    lines = [f"# vibbench report: {run_id}", "", *([f"**Partial report**: {partial}.", ""] if partial else [])]
    lines += [f"- **{k}**: {v}" for k, v in items]
    if not prov and not config:
        lines.append("- no config.json or provenance.json next to metrics.csv: the provenance of these numbers is unknown")
    lines += [f"- note: {p}" for p in problems]
    lines += [
        "",
        "Built from metrics.csv alone. Values are percentages unless a unit is given. With several seeds a cell reads "
        "mean ± half-width of the 95% Student-t interval over seeds; with one seed it is the plain value. "
        "`—` marks a measurement that is absent.",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# sections; each returns Markdown lines for one dataset's rows

Embed = Callable[[str, str], list[str]]


def _clean_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    c = clean_rows(d)
    c = c[c.split.isin(["test", "val"]) & c.metric.isin(["error", "accuracy"])]
    if c.empty:
        return _not_run("metrics.csv has no clean test or validation accuracy rows.")
    lines = [
        "Top-1 error on the clean test and validation splits in % (accuracy = 100% − error). For VIB the predictor "
        "averages the softmax over 12 draws of z; the mean mode uses z = μ. Rate = E[KL(q(z|x) ‖ N(0, I))] in bits, "
        "an upper bound on I(Z;X); train time in seconds per (model, seed).",
        "",
    ]
    allc = clean_rows(d)
    summary = summary_markdown(allc[allc.split.isin(["test", "val", "train"])], title="clean")
    lines += [line for line in summary.splitlines() if line.startswith("|")]
    rows = []
    for label in model_order(c):
        m = allc[allc.label == label]
        sel = lambda split, mode, metric, m=m: m[(m.split == split) & (m.eval_mode == mode) & (m.metric == metric)]  # noqa: E731
        rows.append(
            [f"`{label}`", _pct(sel("test", "predictor", "accuracy")), _pct(sel("test", "mean", "accuracy")), _num(sel("test", "predictor", "nll"), 4)]
        )
    lines += ["", *markdown_table(["model", "test accuracy", "test accuracy (mean mode)", "test NLL (nats)"], rows)]
    lines += ["", *embed("clean_error", "Clean test error per model (dots: seeds)")]
    return lines


def _flags_by_model(d: pd.DataFrame) -> dict[str, str]:
    checks = d[(d.attack == "checks") & d.metric.str.startswith("flag_")]
    out = {}
    for label, g in checks.groupby("label", sort=False):
        seeds = g.seed.nunique()
        fired = []
        for metric in [f"flag_{f}" for f in FLAGS] + sorted(set(g.metric) - {f"flag_{f}" for f in FLAGS}):
            on = g[(g.metric == metric) & (g.value >= 0.5)]
            if not on.empty:
                k = on.seed.nunique()
                fired.append(metric[len("flag_") :] + (f" ({k}/{seeds} seeds)" if k < seeds else ""))
        out[label] = "⚠ " + ", ".join(fired) if fired else "none"
    return out


def _robustness_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    rob = d[(d.attack != "") & ~d.metric.isin(PAPER_PROTOCOL_METRICS)]  # the paper protocol has its own section
    ra = rob[(rob.metric == "robust_accuracy") & rob.norm.isin(list(NORM_TITLES)) & rob.eps.notna()]
    if ra.empty:
        return _not_run("metrics.csv has no adversarial robustness rows (attack, norm, eps).")
    labels = model_order(ra)
    lines = _robustness_intro(rob, ctx["config"])
    lines += _worst_case_tables(rob, ra, labels)
    lines += _per_attack_tables(rob, ra, labels)
    lines += _checks_table(rob, labels)
    lines += ["", *embed("robust_accuracy", "Robust accuracy against ε (thick: worst case; thin: each attack at its strongest path)")]
    return lines


def _robustness_intro(rob: pd.DataFrame, config: dict) -> list[str]:
    """What robust accuracy, the judge, ε, the worst case and the flags mean; which AutoAttack ran."""
    n_max = int(rob.n.max()) if rob.n.notna().any() else None
    subset = _image_set(n_max, config)
    draws = _get(_eval_section(config), "attacks", "judge_draws")
    judge = f"{draws} independent noise draws" if draws else "several independent noise draws"
    lines = [
        f"Robust accuracy in %: the share of {subset} that the model's own predictor classifies correctly both clean "
        "and on the adversarial example. ε is the attack budget: L∞ in pixel scale [0, 1] (MNIST's standard is 0.3), "
        "L2 as the Euclidean norm of the perturbation over the 28×28 image in the same scale. A stochastic model's "
        f"predictor is random, so a judge evaluates it under {judge}, with the noise fixed per image (the clean and the "
        "attacked image share it); a cell shows the expected robust accuracy over images and draws. A deterministic "
        "model is judged once. Stochastic models are attacked on two gradient paths: the mean path z = μ and the "
        "sampled predictor with EOT (gradients averaged over draws).",
        "",
        "The worst case is the number to quote. It is conservative: an image counts as robust at ε only if no attack, "
        "on any path, under any of the judge's draws, broke it at any ε' ≤ ε; its clean column is the share of the same "
        "images classified correctly under every draw. C&W distances are those of points the judge misclassifies "
        "(failures count as infinite). On a stochastic model's EOT path, Square queries the predictor averaged over "
        "several draws.",
        "",
        "Gradient-masking checks mark the rows they doubt (†) and never hide a number: "
        + "; ".join(f"{name}: {text}" for name, text in FLAGS.items())
        + ". A fired flag means the doubted number may overstate robustness.",
    ]
    label = _configured_autoattack_label(config)
    if label and (rob.attack == "autoattack").any():
        lines += ["", f"The `autoattack` rows are: {label}."]
    elif label:
        lines += ["", f"AutoAttack as configured: {label}."]
    return lines


def _worst_case_tables(rob: pd.DataFrame, ra: pd.DataFrame, labels: list[str]) -> list[str]:
    """Per norm, the worst-case robust accuracy of each model at each ε, with its clean accuracy and fired flags."""
    flags = _flags_by_model(rob)
    clean = rob[(rob.attack == "clean") & rob.metric.isin(["robust_accuracy", "robust_accuracy_all_draws"])]
    wc_all = ra[ra.attack == "worst_case"]
    lines = []
    for norm, title in NORM_TITLES.items():
        wc = wc_all[wc_all.norm == norm]
        if wc.empty:
            continue
        eps_list = sorted(set(wc.eps))
        rows = []
        for lab in labels:
            m = wc[wc.label == lab]
            if m.empty:
                continue
            c = clean[clean.label == lab]
            if c.n.isin(set(m.n)).any():  # the clean accuracy of the worst case's own images
                c = c[c.n.isin(set(m.n))]
            if (c.metric == "robust_accuracy_all_draws").any():  # the worst case's own judgement: under every draw
                c = c[c.metric == "robust_accuracy_all_draws"]
            rows.append(
                [f"`{lab}`", _seeds(m), _n(m), _pct_n(c), _n(c)]
                + [_pct_n(m[_close(m.eps, e)]) for e in eps_list]
                + [flags.get(lab, "—")]
            )
        lines += ["", f"**Worst-case robust accuracy, {title} (%, [95% interval])**", ""]
        lines += markdown_table(["model", "seeds", "n", "clean", "n (clean)"] + [_eps(e) for e in eps_list] + ["flags"], rows)
        lines += _paired_tests(rob, norm, eps_list, labels)
    if wc_all.empty:
        lines += ["", "No worst-case rows: see the per-attack tables."]
        if flags:
            lines[-1] += " Gradient-masking flags: " + "; ".join(f"`{k}`: {v}" for k, v in flags.items()) + "."
    return lines


def _per_attack_tables(rob: pd.DataFrame, ra: pd.DataFrame, labels: list[str]) -> list[str]:
    """Per norm, robust accuracy of each model, attack and gradient path at each ε (and the median L2 distance
    of the successful minimal attacks where measured)."""
    dist = rob[rob.metric.isin(["median_adv_distance", "attack_success_rate"])]
    doubt = rob[rob.metric.str.startswith("flag_") & (rob.attack != "checks") & (rob.value >= 0.5)]
    shared = rob[rob.metric == "robust_accuracy_shared"]
    lines = []
    for norm, title in NORM_TITLES.items():
        single = ra[(ra.norm == norm) & (ra.attack != "worst_case")]
        if single.empty:
            continue
        eps_list = sorted(set(single.eps))
        attacks = [a for a in ATTACK_NAMES if a in set(single.attack)] + sorted(set(single.attack) - set(ATTACK_NAMES))
        norm_dist = dist if not dist[dist.norm == norm].empty else None
        rows = [
            _per_attack_row(single, norm_dist, lab, attack, path, eps_list, doubt)
            for lab in labels
            for attack in attacks
            for path in pd.unique(single.path[(single.label == lab) & (single.attack == attack)])
        ]
        header = ["model", "attack", "path", "n"] + [_eps(e) for e in eps_list]
        if norm_dist is not None:
            header += ["median ‖δ‖₂ (failures ∞)", "success rate"]
        lines += ["", f"**Per attack and gradient path, {title} (expected robust accuracy, %, [95% interval]; † doubted by a flag)**", ""]
        lines += markdown_table(header, rows)
        marked = doubt[doubt.norm == norm]
        if not marked.empty:
            notes = [f"`{lab}` {attack} ({path}) at {_eps(eps)}: {', '.join(sorted({m[len('flag_'):] for m in g.metric}))}"
                     + (_shared_note(shared, lab, path, norm, eps) if set(g.metric) & {f"flag_{f}" for f in ACROSS_ROWS} else "")
                     for (lab, attack, path, eps), g in marked.groupby(["label", "attack", "path", "eps"], sort=False)]  # fmt: skip
            lines += ["", "† " + "; ".join(notes) + "."]
    return lines


def _shared_note(shared: pd.DataFrame, label: str, path: str, norm: str, eps: float) -> str:
    """What the masking checks compared for a flagged row: the longer rows of its model, path and budget on the first
    n images only, the ones they share with the shorter rows (the expensive attacks'); "" where none was recorded."""
    rows = shared[(shared.label == label) & (shared.path == path) & (shared.norm == norm) & np.isclose(shared.eps.astype(float), eps)]
    if rows.empty:
        return ""
    parts = [f"{attack} {_pct(g, digits=1)}" for attack, g in rows.groupby("attack", sort=False)]
    return f" (compared on the first {int(rows.n.iloc[0])} images: there {', '.join(parts)})"


def _per_attack_row(
    single: pd.DataFrame, dist: pd.DataFrame | None, lab: str, attack: str, path: str, eps_list: list[float], doubt: pd.DataFrame | None = None
) -> list[str]:
    """One model, attack and path: n, robust accuracy per ε (with † where a flag doubts it), and the median distance
    and success rate unless `dist` is None."""
    m = single[(single.label == lab) & (single.attack == attack) & (single.path == path)]
    d = doubt[(doubt.label == lab) & (doubt.attack == attack) & (doubt.path == path)] if doubt is not None else None
    row = [f"`{lab}`", attack, path or "—", _n(m)]
    row += [_pct_n(m[_close(m.eps, e)]) + (" †" if d is not None and _close(d.eps, e).any() else "") for e in eps_list]
    if dist is not None:
        dd = dist[(dist.label == lab) & (dist.attack == attack) & (dist.path == path)]
        median, rate = dd[dd.metric == "median_adv_distance"], dd[dd.metric == "attack_success_rate"]
        row += [_num(median, 3) if not median.empty else "—", _pct(rate, 1) if not rate.empty else "—"]
    return row


def _paired_tests(rob: pd.DataFrame, norm: str, eps_list: list[float], labels: list[str]) -> list[str]:
    """Each model against the deterministic baseline on the same images: the difference in worst-case robust accuracy
    and an exact McNemar test on the per-image outcomes (metric worst_case_radius), discordant pairs summed over seeds."""
    radius = rob[(rob.metric == "worst_case_radius") & (rob.norm == norm)]
    base = "mlp_deterministic"
    if radius.empty or base not in set(radius.label):
        return []
    ref = radius[radius.label == base].set_index(["seed", "bin"]).value
    rows = []
    for lab in labels:
        if lab == base or lab not in set(radius.label):
            continue
        other = radius[radius.label == lab].set_index(["seed", "bin"]).value
        common = ref.index.intersection(other.index)
        if common.empty:
            continue
        cells = []
        for eps in eps_list:
            a, b = ref.loc[common] >= eps - 1e-9, other.loc[common] >= eps - 1e-9
            only_model, only_base = int((b & ~a).sum()), int((a & ~b).sum())
            diff = 100.0 * (only_model - only_base) / len(common)
            cells.append(f"{diff:+.1f} (p={mcnemar_exact(only_model, only_base):.2g})")
        rows.append([f"`{lab}`", str(len(common))] + cells)
    if not rows:
        return []
    return [
        "",
        f"Paired against `{base}` on the same images: the difference in worst-case robust accuracy (points) and the exact "
        "McNemar p-value on the per-image outcomes (seeds pooled). A p-value above 0.05 means the difference is within "
        "what the sampling of images explains.",
        "",
        *markdown_table(["model", "images"] + [_eps(e) for e in eps_list], rows),
    ]


def _checks_table(rob: pd.DataFrame, labels: list[str]) -> list[str]:
    zero = rob[(rob.attack == "gradient") & (rob.metric == "zero_grad_fraction")]
    large = rob[rob.metric == "large_eps_accuracy"]
    if zero.empty and large.empty:
        return []
    budgets = sorted({(a, nm, e) for a, nm, e in zip(large.attack, large.norm, large.eps)}, key=lambda t: (t[1] != "linf", t[2], t[0]))
    paths = [p for p in pd.unique(pd.concat([zero.path, large.path])) if p]
    rows = []
    for lab in labels:
        for path in paths:
            z = zero[(zero.label == lab) & (zero.path == path)]
            cells = [_pct(large[(large.label == lab) & (large.path == path) & (large.attack == a) & (large.norm == nm) & _close(large.eps, e)])
                     for a, nm, e in budgets]  # fmt: skip
            if z.empty and all(c == "—" for c in cells):
                continue
            rows.append([f"`{lab}`", path, _pct(z)] + cells)
    if not rows:
        return []
    header = ["model", "path", "zero-gradient examples"] + [f"{ATTACK_NAMES.get(a, a)} {NORM_TITLES.get(nm, nm)} {_eps(e)}, no random start" for a, nm, e in budgets]
    return [
        "",
        "**Gradient-masking checks (%)**: share of examples whose input gradient is exactly zero, and expected robust "
        "accuracy at a very large budget, where an attack that works leaves about 0%.",
        "",
        *markdown_table(header, rows),
    ]


def _calibration_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    cal = d[(d.calibration != "") & d.bin.isna()]
    if cal.empty:
        return _not_run("metrics.csv has no calibration rows.")
    n_bins = _get(ctx["config"], "eval", "calibration_bins")
    if n_bins is None:
        bins = d[(d.calibration != "") & d.bin.notna()].bin
        n_bins = int(bins.max()) + 1 if not bins.empty else 15
    lines = [
        f"Calibration of the test-set predictions. ECE: expected calibration error with {n_bins} equal-width confidence "
        "bins (the mass-weighted mean |accuracy − confidence| of the top-1 prediction) in percentage points; MCE: the "
        "largest gap over the bins holding at least 30 examples (over fewer, a bin's accuracy has a 95% interval wider "
        "than ±18 points; — when no bin holds 30); adaptive ECE: the same with equal-mass bins; NLL: mean negative log-likelihood in nats per "
        "example; Brier: multi-class Brier score in [0, 2]. Temperature scaling divides the logits by T fitted on the "
        "validation split (minimum NLL); T > 1 means the model was over-confident. The mean mode uses z = μ.",
        "",
    ]
    rows = []
    for lab in model_order(cal):
        for mode in [m for m in MODE_NAMES if m in set(cal.eval_mode[cal.label == lab])]:
            m = cal[(cal.label == lab) & (cal.eval_mode == mode)]
            none, temp = m[m.calibration == "none"], m[m.calibration == "temperature"]
            rows.append(
                [
                    f"`{lab}`",
                    mode,
                    _pct(none[none.metric == "ece"]),
                    _pct(none[none.metric == "mce"]),
                    _pct(none[none.metric == "adaptive_ece"]),
                    _num(none[none.metric == "nll"], 4),
                    _num(none[none.metric == "brier"], 4),
                    _pct(temp[temp.metric == "ece"]),
                    _num(temp[temp.metric == "nll"], 4),
                    _num(temp[temp.metric == "temperature"], 2),
                ]
            )
    header = ["model", "eval mode", "ECE", "MCE", "adaptive ECE", "NLL (nats)", "Brier", "ECE after T", "NLL after T (nats)", "T"]
    lines += markdown_table(header, rows)
    lines += ["", *embed(
        "reliability",
        "Reliability diagrams of the predictor before temperature scaling: bars = accuracy per confidence bin, "
        "dots = mean confidence in the bin (on the dashed diagonal when calibrated); below, the share of test "
        "examples per bin (log scale); bins pooled over seeds",
    )]
    return lines


def _ood_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    o = d[(d.ood != "") & d.metric.isin(["auroc", "aupr", "fpr95"])]
    if o.empty:
        return _not_run("metrics.csv has no OOD detection rows.")
    dataset = ", ".join(p for p in pd.unique(d.dataset) if p) or "the in-distribution"
    lines = [
        f"Separating the {dataset} test images (negatives) from an out-of-distribution set (positives) by a score that "
        "is higher for OOD: minus the maximum softmax probability (msp), the predictive entropy in nats (entropy), or for "
        "VIB the per-example rate KL(q(z|x) ‖ r(z)) (rate). AUROC: probability that a random OOD image scores above a "
        "random in-distribution one (50% = chance); AUPR: average precision with OOD positive; FPR@95: share of "
        "in-distribution images flagged at the threshold that catches 95% of the OOD images (lower is better). All in %.",
    ]
    for ood in pd.unique(o.ood):
        od = o[o.ood == ood]
        rows = []
        for lab in model_order(od):
            for score in [s for s in SCORE_NAMES if s in set(od.score[od.label == lab])] + sorted(set(od.score[od.label == lab]) - set(SCORE_NAMES)):
                m = od[(od.label == lab) & (od.score == score)]
                rows.append([f"`{lab}`", score, _pct(m[m.metric == "auroc"]), _pct(m[m.metric == "aupr"]), _pct(m[m.metric == "fpr95"])])
        lines += ["", f"**OOD set: {ood}**", ""]
        lines += markdown_table(["model", "score", "AUROC", "AUPR", "FPR@95"], rows)
    lines += ["", *embed("ood_roc", "ROC curves of OOD detection")]
    return lines


def _shift_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    shift_rows = d[(d.corruption != "") & d.severity.notna() & d.metric.isin(["accuracy", "ece", "nll"])]
    sh, uncorrupted = shift_rows[shift_rows.corruption != "none"], shift_rows[shift_rows.corruption == "none"]
    if sh.empty:
        return _not_run("metrics.csv has no distribution-shift (corruption) rows.")
    n = int(sh.n.max()) if sh.n.notna().any() else None
    severities = sorted(int(s) for s in set(sh.severity))
    corruptions = list(pd.unique(sh.corruption))
    images = _image_set(n, ctx["config"])
    clean_is = "the same images uncorrupted" if not uncorrupted.empty else "the clean test set"
    lines = [
        f"Accuracy (%) and ECE (%, 15 equal-width bins unless configured otherwise) of the predictor on "
        f"{images}, corrupted by each of {len(corruptions)} corruptions "
        f"({', '.join(corruptions)}) at severity 1 (mild) to 5 (strong); the parameters per severity are in "
        f"`vibbench/data/corruptions.py`. The clean column is {clean_is}. The main tables average over corruptions "
        "(per seed, then over seeds); the full table is below.",
    ]
    if not uncorrupted.empty:
        clean_acc, clean_ece = uncorrupted[uncorrupted.metric == "accuracy"], uncorrupted[uncorrupted.metric == "ece"]
    else:  # runs before the shift set had its own severity-0 rows
        clean = clean_rows(d)
        clean_acc = clean[(clean.split == "test") & (clean.eval_mode == "predictor") & (clean.metric == "accuracy")]
        clean_ece = d[(d.calibration == "none") & (d.eval_mode == "predictor") & (d.metric == "ece") & d.bin.isna()]
    labels = model_order(sh)
    for metric, title, clean_sel in (("accuracy", "Accuracy", clean_acc), ("ece", "ECE", clean_ece)):
        md = sh[sh.metric == metric]
        if md.empty:
            continue
        rows = []
        for lab in labels:
            m = md[md.label == lab]
            rows.append(
                [f"`{lab}`", _pct(clean_sel[clean_sel.label == lab])]
                + [_pct(m[m.severity == s]) for s in severities]
                + [_pct(m)]
            )
        lines += ["", f"**{title} under corruption, mean over corruptions (%)**", ""]
        lines += markdown_table(["model", "clean"] + [f"severity {s}" for s in severities] + ["mean"], rows)
    acc = sh[sh.metric == "accuracy"]
    if not acc.empty:
        rows = []
        for lab in labels:
            for corruption in corruptions:
                m = acc[(acc.label == lab) & (acc.corruption == corruption)]
                if not m.empty:
                    rows.append([f"`{lab}`", corruption] + [_pct(m[m.severity == s]) for s in severities])
        lines += ["", "<details><summary>Accuracy per corruption and severity (%)</summary>", ""]
        lines += markdown_table(["model", "corruption"] + [f"severity {s}" for s in severities], rows)
        lines += ["", "</details>"]
    lines += ["", *embed("shift", "Accuracy and ECE against corruption severity")]
    return lines


def _sweep_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    clean = clean_rows(d)
    vib = clean[clean.method == "vib"]
    betas = sorted(set(vib.beta.dropna()))
    if len(betas) < 2:
        return _not_run(f"the β sweep needs VIB models at 2 or more distinct β; this run has {len(betas)}.")
    rob = d[(d.attack == "worst_case") & (d.norm == "linf") & (d.metric == "robust_accuracy")]
    sweep_eps = [e for e in SWEEP_EPS if _close(rob.eps, e).any()]
    ece = d[(d.calibration == "none") & (d.eval_mode == "predictor") & (d.metric == "ece") & d.bin.isna()]
    lines = [
        "The VIB models ordered by β, the weight of the rate in the loss CE + β·KL. Test error in % (stochastic "
        "predictor); rate = E[KL(q(z|x) ‖ N(0, I))] in bits, an upper bound on I(Z;X); I(Z;Y) ≥ H(Y) − E[−log q(y|z)] in "
        "bits, a lower bound (at most log2 10 ≈ 3.32 bits for 10 balanced classes); worst-case robust accuracy (%) at "
        "the L∞ budgets shown and ECE (%) where measured. Alemi et al. (2017) find the best robustness at intermediate β.",
        "",
    ]
    keys = vib.drop_duplicates("label")[["label", "backbone", "beta"]].sort_values(["backbone", "beta"], kind="stable")
    rows = []
    for r in keys.itertuples():
        m = vib[vib.label == r.label]
        sel = lambda metric, m=m: m[(m.split == "test") & (m.eval_mode == "predictor") & (m.metric == metric)]  # noqa: E731
        row = [f"`{r.label}`", f"{r.beta:g}", _seeds(m), _pct(sel("error")), _num(sel("rate_bits"), 2), _num(sel("izy_bits"), 3)]
        row += [_pct(rob[(rob.label == r.label) & _close(rob.eps, e)]) for e in sweep_eps]
        row += [_pct(ece[ece.label == r.label])] if not ece.empty else []
        rows.append(row)
    header = ["model", "β", "seeds", "test error", "rate I(Z;X) ≤ (bits)", "I(Z;Y) ≥ (bits)"]
    header += [f"worst-case L∞ {_eps(e)}" for e in sweep_eps] + (["ECE"] if not ece.empty else [])
    lines += markdown_table(header, rows)
    lines += ["", *embed("beta_sweep", "Test error and rate against β")]
    lines += ["", *embed(
        "information_plane",
        "The information plane: I(Z;Y) lower bound against the I(Z;X) upper bound, in bits, one point per VIB model "
        "(mean over seeds; error bars: 95% t-interval when there are several)",
    )]
    return lines


def _training_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str]:
    c = clean_rows(d)
    tr = c[(c.split == "train") & (c.eval_mode == "training")]
    if tr.empty:
        return _not_run("metrics.csv has no training rows.")
    epochs = _get(ctx["config"], "train", "epochs")
    device = _get(ctx["prov"], "device_name") or _get(ctx["prov"], "device")
    lines = [
        "Wall-clock training time in seconds per (model, seed)"
        + (f" on {device}" if device else "")
        + ", training throughput in examples per second (mean over epochs), and the last epoch's loss, cross-entropy "
        "and KL term in nats per example (KL is 0 for non-VIB models).",
        "",
    ]
    rows = []
    for lab in model_order(tr):
        m = tr[tr.label == lab]
        row = [f"`{lab}`", _seeds(m), _num(m[m.metric == "seconds"], 1)]
        if isinstance(epochs, int) and epochs > 0:
            row.append(format_cell([v / epochs for v in _per_seed(m[m.metric == "seconds"])], scale=1.0, digits=2, suffix=""))
        row += [_num(m[m.metric == "examples_per_second"], 0), _num(m[m.metric == "loss"], 4), _num(m[m.metric == "ce"], 4), _num(m[m.metric == "kl"], 4)]
        rows.append(row)
    header = ["model", "seeds", "time (s)"] + (["time per epoch (s)"] if isinstance(epochs, int) and epochs > 0 else [])
    header += ["examples / s", "final loss (nats)", "final CE (nats)", "final KL (nats)"]
    lines += markdown_table(header, rows)
    total = tr[tr.metric == "seconds"].value.sum()
    lines += ["", f"Total training time over all models and seeds: {total:.0f} s ({total / 60:.1f} min)."]
    evaluation = evaluation_time_lines(d)
    return lines + ([""] + evaluation if evaluation else [])


REPORT_SECTIONS: dict[str, tuple[str, Callable]] = {
    "clean": ("Clean accuracy", _clean_section),
    "published": ("Published references (Table 1)", published_section),
    "robustness": ("Adversarial robustness", _robustness_section),
    "calibration": ("Calibration", _calibration_section),
    "ood": ("Out-of-distribution detection", _ood_section),
    "shift": ("Distribution shift", _shift_section),
    "sweep": ("The β sweep", _sweep_section),
    "training": ("Training and evaluation time", _training_section),
    "paper_protocol": ("The paper's robustness claim: paper protocol and honest protocol", paper_protocol_section),
    "embedding": ("Two-dimensional embedding (K = 2)", embedding_section),
}
"""Every section of the report, by name, in the report's order: (title, builder of its Markdown lines). Each
evaluation section of `vibbench.evaluation.sections.SECTIONS` has its entry under the same name; clean, published,
sweep and training are drawn from the run's clean and training rows (published: `reporting/published.py`). The last
two (`reporting/paper_section.py`) are optional: a builder that returns None for every dataset (the rows are absent)
leaves its section out, heading and number included, so the numbers of the others never change."""

SECTIONS = tuple(title for title, _ in REPORT_SECTIONS.values())
"""The sections' titles, numbered in this order in report.md."""


def unrendered_sections() -> list[str]:
    """Evaluation sections the runner measures that the report has no entry for (none: checked by the tests)."""
    from vibbench.evaluation.sections import SECTIONS as EVALUATION_SECTIONS

    return sorted(set(EVALUATION_SECTIONS) - set(REPORT_SECTIONS))


# ---------------------------------------------------------------------------------------------
# the report


def build_report(
    df: pd.DataFrame,
    config: dict | None = None,
    prov: dict | None = None,
    problems: list[str] | None = None,
    *,
    draw: bool = True,
    partial: str | None = None,
):
    """(Markdown text, {figure name: Figure or None}) for the metrics `df`; writes nothing.

    With draw=False no figure is drawn and the text embeds none (for quick checks of the tables). `partial` (what
    is missing) makes the first line under the title "**Partial report**: <partial>.".
    """
    df = tidy_metrics(df)
    config, prov = config or {}, prov or {}
    datasets = [d for d in pd.unique(df.dataset)] or [""]
    multi = len(datasets) > 1
    figures: dict[str, object] = {}
    for dataset in datasets if draw else []:
        d = df[df.dataset == dataset] if len(df) else df
        for name, fn in FIGURES.items():
            figures[f"{name}_{_slug(dataset)}" if multi else name] = fn(d) if len(d) else None

    lines = _provenance_lines(df, config, prov, problems or [], partial)
    ctx = {"config": config, "prov": prov}
    number = 0
    for name, (title, builder) in REPORT_SECTIONS.items():
        bodies = []
        for dataset in datasets:
            d = df[df.dataset == dataset] if len(df) else df

            def embed(name: str, caption: str, dataset=dataset) -> list[str]:
                key = f"{name}_{_slug(dataset)}" if multi else name
                if figures.get(key) is None:
                    return []
                return [f"![{caption}](figures/{key}.png)", "", f"*{caption}.* ([PDF](figures/{key}.pdf))"]

            bodies.append((dataset, builder(d, ctx, embed)))
        if all(body is None for _, body in bodies):  # an optional section without its rows is left out
            continue
        number += 1
        lines += ["", f"## {number}. {title}"]
        for dataset, body in bodies:
            lines += (["", f"### {dataset}"] if multi else []) + ["", *(body if body is not None else _not_run("no rows of this section for this dataset."))]
    text = "\n".join(lines).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text, figures


def missing_runs(df: pd.DataFrame, config: dict) -> list[str]:
    """The (model, seed) pairs config.json lists (its `models` labels times its `seeds`) that `df` has no metrics.csv row of,
    as "label seed s" in config order; none when config.json does not list them."""
    models, seeds = _get(config, "models"), _get(config, "seeds")
    if not isinstance(models, list) or not isinstance(seeds, list):
        return []
    labels = [m["label"] for m in models if isinstance(m, dict) and isinstance(m.get("label"), str)]
    seeds = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)]
    d = tidy_metrics(df)
    d = d[~d["metric"].isin(TIMING_METRICS)]  # timing.csv's rows say a model was trained, not that it was measured
    present = set(zip(d["label"], d["seed"]))
    return [f"{label} seed {seed}" for seed in seeds for label in labels if (label, float(seed)) not in present]


def _listed(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def write_report(run_dir: Path, df: pd.DataFrame | None = None, *, allow_partial: bool = False) -> Path:
    """(Re)build run_dir/report.md and run_dir/figures/*.png + *.pdf from metrics.csv alone; return report.md's path.

    `df` defaults to `read_metrics(run_dir)` (a folder without metrics.csv raises VibbenchError).
    config.json and provenance.json are read when present for the provenance header. Figures whose
    data are absent are not drawn, and a stale copy from an earlier build is removed.

    Before anything is written the metrics are checked (`metrics.check_metrics`: text, one run, no repeated rows,
    numbers in range), and every model and seed config.json lists must have rows: a VibbenchError names the first
    problem. With allow_partial a metrics.csv lacking some of them (or cut off within its last row) is reported
    anyway, and the report says what is missing in one line at its top.
    """
    run_dir = Path(run_dir)
    notes: list[str] = []
    if df is None:
        df, notes = read_metrics_and_notes(run_dir, allow_partial=allow_partial)
    else:
        check_metrics(df)
    config, p1 = _read_json(run_dir / "config.json")
    prov, p2 = _read_json(run_dir / "provenance.json")
    missing = missing_runs(df, config)
    if missing and not allow_partial:
        total = len(_get(config, "models")) * len(_get(config, "seeds"))
        raise VibbenchError(
            f"{run_dir / 'metrics.csv'} lacks {len(missing)} of the {total} models x seeds config.json lists ({_listed(missing)}): "
            "the file is incomplete (cut short or from an interrupted run); rerun `vibbench eval --config "
            f"{run_dir / 'options.json'}` to write it again, or pass --allow-partial to report what is there"
        )
    if missing:
        notes.append(f"metrics.csv lacks {_listed(missing)}, which config.json lists")
    partial = "; ".join(notes) + "; the tables below cover the rest" if notes else None
    text, figures = build_report(df, config, prov, [p for p in (p1, p2) if p], partial=partial)
    folder = run_dir / "figures"
    drawn = set()
    for name, fig in figures.items():
        if fig is not None:
            drawn.update(p.name for p in save_figure(fig, folder, name))
    # figures of an earlier build whose data are gone now (or that were per dataset) must not linger; where the
    # folder's manifest lists what vibbench wrote, only those (a file of the user's is never deleted)
    manifest = read_manifest(run_dir)
    removed = []
    for base in FIGURES:
        for pattern in (f"{base}.png", f"{base}.pdf", f"{base}_*.png", f"{base}_*.pdf"):
            for stale in folder.glob(pattern):
                if stale.name not in drawn and (manifest is None or not manifest.complete or manifest.lists(run_dir, stale)):
                    stale.unlink(missing_ok=True)
                    removed.append(stale)
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    record_rewritten(run_dir, [path, *(folder / name for name in sorted(drawn))], removed)
    return path


__all__ = ["REPORT_SECTIONS", "SECTIONS", "build_report", "missing_runs", "unrendered_sections", "write_report"]
