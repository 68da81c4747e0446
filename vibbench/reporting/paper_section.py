"""The report's sections on the paper's robustness claim measured two ways, and on the K = 2 embedding
(rows of vibbench/evaluation/paper_protocol.py). Each returns None when its rows are absent, and the report then
leaves the section out (runs made before these sections existed render as they did).

The finding is computed, never written by hand: per VIB model and norm, the advantage over `mlp_deterministic` (the
difference of the two models' numbers, VIB minus baseline in robustness) under each protocol with its 95% interval:
for one seed Newcombe's hybrid score interval of two proportions (`stats.newcombe_interval`; it treats the two
models' images as independent, so for the same images it is conservative), for several seeds the t-interval over the
per-seed differences. An advantage "survives" the honest protocol where the honest interval lies above 0, "vanishes"
where it contains 0, and "reverses" where it lies below 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from vibbench.reporting.figures import PAPER_PROTOCOL_METRICS, embedding_labels, protocol_estimate, protocol_models
from vibbench.reporting.markdown import markdown_table
from vibbench.reporting.metrics import clean_rows, format_cell
from vibbench.reporting.published import estimate, placement
from vibbench.reporting.references import K2_REFERENCE, comparability
from vibbench.reporting.stats import mean_ci95, newcombe_interval

BASELINE = "mlp_deterministic"

Embed = Callable[[str, str], list[str]]


def _get(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj


def _cell(est: tuple[float, float, float] | None) -> str:
    if est is None:
        return "—"
    mean, low, high = (100 * v for v in est)
    return f"{mean:.1f}%" if math.isnan(low) else f"{mean:.1f} [{low:.1f}, {high:.1f}]%"


def _beta(d: pd.DataFrame, label: str) -> str:
    m = d[d.label == label].iloc[0]
    return f"{m.beta:g}" if m.method == "vib" and not math.isnan(m.beta) else "—"


def _eps_rows(d: pd.DataFrame, eps: float) -> pd.DataFrame:
    return d[np.isclose(d.eps.to_numpy(dtype=float), eps, rtol=0, atol=1e-9)]


# ---------------------------------------------------------------------------------------------- paper protocol


def paper_protocol_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str] | None:
    rows = d[d.attack.isin(["paper_fgs", "paper_cw"]) & d.metric.isin(PAPER_PROTOCOL_METRICS)]
    if rows.empty:
        return None
    fgs = rows[(rows.attack == "paper_fgs") & (rows.metric.isin(["adversarial_accuracy", "adversarial_accuracy_all_draws"]))]
    cw = rows[rows.attack == "paper_cw"]
    lines = _intro(rows, ctx["config"])
    if not fgs.empty:
        lines += _fgs_table(fgs)
        lines += ["", *embed("paper_protocol_linf", "FGS (L∞): each model's accuracy on the adversarial images under the paper's protocol "
                             "(filled circles) and the honest one (open squares), with 95% intervals")]  # fmt: skip
    if not cw.empty:
        lines += _cw_table(cw)
        lines += ["", *embed("paper_protocol_l2", "Targeted C&W (L2): the share of (image, target) pairs the attack turns into the "
                             "target under the paper's protocol (filled circles) and the honest one (open squares), with 95% intervals")]  # fmt: skip
    lines += finding_lines(rows)
    return lines


def _intro(rows: pd.DataFrame, config: dict) -> list[str]:
    paper = _get(config, "eval", "paper_protocol") or {}
    attacks = _get(config, "eval", "attacks") or {}
    n_fgs = rows[rows.attack == "paper_fgs"].n.max()
    n_cw = rows[rows.attack == "paper_cw"].n.max()
    targets = {"all": "toward each of the other classes", "next": "toward the next class, (y + 1) mod 10"}.get(paper.get("cw_targets"), "toward target classes")
    cs = ", ".join(f"{c:g}" for c in attacks.get("cw_cs", [])) or "the configured constants"
    lines = [
        "Alemi et al. (2017, Sec. 4.2) attack the first 1000 MNIST test images and find VIB far more robust than the "
        "deterministic baseline. This section runs their attacks as they ran them (the *paper protocol*) on every model "
        "of this run, and beside them the *honest protocol* on the same images and budgets, so the reader sees how much "
        "of the claimed robustness survives.",
        "",
        f"- **Images**: the first {int(n_fgs) if pd.notna(n_fgs) else 'N'} test images in test-split order (not the run's random "
        f"evaluation set), the first {int(n_cw) if pd.notna(n_cw) else 'N'} of them for C&W.",
        "- **Paper protocol**: the model's predictor attacked as it is (for VIB the softmax averaged over its 12 draws of z), "
        "each gradient from one stochastic forward pass (no EOT, no mean path); untargeted FGS at the budgets shown; "
        f"targeted C&W L2 {targets}, at c = {cs} ({attacks.get('cw_steps', '?')} Adam steps each), keeping per pair the "
        "smallest perturbation the attack's own passes classified as the target. Judged by one forward pass of the "
        "predictor under fresh noise, as the paper evaluates.",
        "- **Honest protocol**: the same images and budgets, FGSM and PGD with EOT "
        f"({attacks.get('eot_iter', '?')} draws per gradient) and on the mean path z = μ, plus the paper's own adversarial "
        f"images; C&W also on the mean path and on the predictor averaged over draws. The judge decides under "
        f"{attacks.get('judge_draws', 'several')} noise draws fixed per image; an image counts as robust under a draw "
        "only if no attack broke it. A cell shows the expected value over the draws; because the honest protocol "
        "contains the paper's attack, it can sit above the paper's number only by the noise of one judgement.",
        "- The paper's summary quantities: accuracy on the adversarial images (FGS) and the targeted success rate (C&W). "
        "Cells: % with the 95% Wilson interval over the images (one seed), or mean and t-interval over seeds.",
    ]
    return lines


def _fgs_table(fgs: pd.DataFrame) -> list[str]:
    acc = fgs[fgs.metric == "adversarial_accuracy"]
    budgets = sorted(e for e in set(acc.eps.dropna()) if e > 0)
    labels = protocol_models(acc)
    rows = []
    for lab in labels:
        row = [f"`{lab}`", _beta(acc, lab), str(int(acc[acc.label == lab].n.max())), _cell(protocol_estimate(acc, lab, "paper", "adversarial_accuracy", 0.0))]
        for eps in budgets:
            row += [_cell(protocol_estimate(acc, lab, p, "adversarial_accuracy", eps)) for p in ("paper", "honest")]
        rows.append(row)
    header = ["model", "β", "n", "clean (paper)"] + [f"ε={eps:g} {p}" for eps in budgets for p in ("paper", "honest")]
    all_draws = fgs[(fgs.metric == "adversarial_accuracy_all_draws") & (fgs.eps > 0)]
    note = []
    if not all_draws.empty:
        worst = [f"`{lab}` {', '.join(_cell(protocol_estimate(all_draws, lab, 'honest', 'adversarial_accuracy_all_draws', e)) for e in budgets)}"
                 for lab in labels if lab in set(all_draws.label)]  # fmt: skip
        note = ["", "Honest, robust under every draw of the judge (the robustness section's worst case), at ε = "
                + ", ".join(f"{e:g}" for e in budgets) + ": " + "; ".join(worst) + "."]  # fmt: skip
    return ["", "**FGS, L∞: accuracy on the adversarial images (%, [95% interval])**", "", *markdown_table(header, rows), *note]


def _cw_table(cw: pd.DataFrame) -> list[str]:
    labels = protocol_models(cw)
    rows = []
    for lab in labels:
        dist = {p: cw[(cw.label == lab) & (cw.path == p) & (cw.metric == "mean_success_distance")] for p in ("paper", "honest")}
        rows.append([
            f"`{lab}`", _beta(cw, lab), str(int(cw[cw.label == lab].n.max())),
            _cell(protocol_estimate(cw, lab, "paper", "targeted_success_rate")),
            _cell(protocol_estimate(cw, lab, "honest", "targeted_success_rate")),
            _cell(protocol_estimate(cw, lab, "honest", "targeted_success_rate_any_draw")),
            *(format_cell(g.groupby("seed").value.mean().dropna().tolist(), scale=1.0, digits=2, suffix="") for g in dist.values()),
        ])  # fmt: skip
    header = ["model", "β", "images", "paper", "honest", "honest (any draw)", "mean ‖δ‖₂ paper", "mean ‖δ‖₂ honest"]
    return [
        "",
        "**Targeted C&W, L2: share of (image, target) pairs turned into the target (%, [95% interval]; lower is more robust)**",
        "",
        *markdown_table(header, rows),
        "",
        "Intervals are over the images (each image's share of its targets), which is conservative; the mean ‖δ‖₂ is over "
        "the successful pairs (the honest one over pairs and draws).",
    ]


# ---------------------------------------------------------------------------------------------- the finding


def advantage(rows: pd.DataFrame, label: str, path: str, metric: str, eps: float | None, *, higher_is_robust: bool) -> tuple[float, float, float] | None:
    """(difference, low, high) of `label` minus the baseline in robustness (in fractions) under one protocol: per seed
    the difference, with Newcombe's interval for one seed and the t-interval over seeds for several; None if absent."""
    def per_seed(lab):
        sel = rows[(rows.label == lab) & (rows.path == path) & (rows.metric == metric)]
        if eps is not None:
            sel = _eps_rows(sel, eps)
        sel = sel[sel.value.notna()]
        return sel.groupby("seed").agg(value=("value", "mean"), n=("n", "max"))

    a, b = per_seed(label), per_seed(BASELINE)
    common = a.index.intersection(b.index)
    if common.empty:
        return None
    sign = 1.0 if higher_is_robust else -1.0
    diffs = [sign * (a.value[s] - b.value[s]) for s in common]
    if len(diffs) > 1:
        mean, half = mean_ci95(diffs)
        return mean, mean - half, mean + half
    s = common[0]
    if pd.isna(a.n[s]) or pd.isna(b.n[s]):
        return diffs[0], math.nan, math.nan
    na, nb = int(a.n[s]), int(b.n[s])
    ka, kb = round(a.value[s] * na), round(b.value[s] * nb)
    if higher_is_robust:  # interval of p_model - p_baseline
        low, high = newcombe_interval(kb, nb, ka, na)
    else:  # robustness is 1 - success: p_baseline - p_model
        low, high = newcombe_interval(ka, na, kb, nb)
    return diffs[0], low, high


def verdict(est: tuple[float, float, float] | None) -> str:
    if est is None or math.isnan(est[1]):
        return "unknown"
    return "survives" if est[1] > 0 else "reverses" if est[2] < 0 else "vanishes"


def _points(est) -> str:
    if est is None:
        return "—"
    d, low, high = (100 * v for v in est)
    return f"{d:+.1f}" if math.isnan(low) else f"{d:+.1f} [{low:+.1f}, {high:+.1f}]"


def finding_lines(rows: pd.DataFrame) -> list[str]:
    """The computed finding: per norm, where VIB's advantage over the baseline under the paper's protocol survives
    the honest protocol, with the table of advantages and intervals behind it."""
    vib = [lab for lab in protocol_models(rows) if (rows.label == lab).any() and rows[rows.label == lab].method.iloc[0] == "vib"]
    if BASELINE not in set(rows.label):
        return ["", f"**Finding**: not computed: the run has no `{BASELINE}` to compare VIB with."]
    if not vib:
        return ["", "**Finding**: not computed: the run has no VIB model."]
    fgs = rows[(rows.attack == "paper_fgs") & (rows.metric == "adversarial_accuracy")]
    cw = rows[(rows.attack == "paper_cw") & (rows.metric == "targeted_success_rate")]
    budgets = sorted(e for e in set(fgs.eps.dropna()) if e > 0)
    columns: list[tuple[str, pd.DataFrame, str, float | None, bool]] = [
        (f"FGS ε={e:g}", fgs, "adversarial_accuracy", e, True) for e in budgets
    ] + ([("C&W", cw, "targeted_success_rate", None, False)] if not cw.empty else [])
    table, by_norm = [], {"L∞ (the paper's FGS budgets)": {}, "L2 (targeted C&W)": {}}
    for lab in vib:
        row = [f"`{lab}`", _beta(rows, lab)]
        for name, sel, metric, eps, higher in columns:
            paper = advantage(sel, lab, "paper", metric, eps, higher_is_robust=higher)
            honest = advantage(sel, lab, "honest", metric, eps, higher_is_robust=higher)
            row += [_points(paper), _points(honest)]
            norm = "L2 (targeted C&W)" if name == "C&W" else "L∞ (the paper's FGS budgets)"
            by_norm[norm].setdefault(lab, []).append((name, verdict(paper), verdict(honest)))
        table.append(row)
    lines = ["", "**Finding** (computed from the rows above; advantage = VIB minus `mlp_deterministic` in robustness, in points):", ""]
    for norm, per_model in by_norm.items():
        if per_model:
            lines.append(f"- {norm}: " + _sentence(rows, per_model))
    header = ["model", "β"] + [f"{name} {p}" for name, *_ in columns for p in ("paper", "honest")]
    lines += [
        "",
        "Advantage over `mlp_deterministic` (points, [95% interval]): robustness is the accuracy on adversarial images for "
        "FGS and 1 − the targeted success rate for C&W. For one seed the interval is Newcombe's for two independent "
        "proportions, conservative for two models on the same images; for several, the t-interval over seeds.",
        "",
        *markdown_table(header, table),
    ]
    return lines


def _named(rows: pd.DataFrame, labels: list[str]) -> str:
    return ", ".join(f"β = {_beta(rows, lab)} (`{lab}`)" for lab in labels)


def _sentence(rows: pd.DataFrame, per_model: dict[str, list[tuple[str, str, str]]]) -> str:
    """One plain sentence: where the paper's protocol shows VIB ahead, and where that survives, vanishes or reverses."""
    ahead = [lab for lab, cells in per_model.items() if any(p == "survives" for _, p, _ in cells)]
    if not ahead:
        return "even under the paper's protocol no VIB model is ahead of the baseline beyond the interval."
    parts = [f"under the paper's protocol VIB is ahead for {_named(rows, ahead)}."]
    survives, vanishes, reverses = [], [], []
    for lab in ahead:
        cells = per_model[lab]
        kept = [name for name, p, h in cells if p == "survives" and h == "survives"]
        if kept:
            survives.append(f"β = {_beta(rows, lab)} (`{lab}`; at {', '.join(kept)})")
        elif any(h == "reverses" for _, p, h in cells if p == "survives"):
            reverses.append(lab)
        else:
            vanishes.append(lab)
    if survives:
        parts.append("Under the honest protocol the advantage survives for " + "; ".join(survives) + ".")
    else:
        parts.append("Under the honest protocol it survives for none.")
    if vanishes:
        parts.append(f"It vanishes (every interval contains 0) for {_named(rows, vanishes)}.")
    if reverses:
        parts.append(f"It reverses (VIB behind the baseline) for {_named(rows, reverses)}.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- K = 2 embedding


def embedding_section(d: pd.DataFrame, ctx: dict, embed: Embed) -> list[str] | None:
    labels = embedding_labels(d)
    if not labels:
        return None
    clean = clean_rows(d)
    config = ctx["config"]
    reasons = comparability(config, [x for x in pd.unique(d.dataset) if x])
    ref = K2_REFERENCE
    lines = [
        "Alemi et al. (2017, Fig. 2) refit VIB with a two-dimensional bottleneck (K = 2) to see the embedding: each test "
        "image's Gaussian q(z|x) = N(μ, diag σ²) drawn as its mean and the ellipse holding 95% of its mass, coloured by "
        "class. Below, the same for this run's K = 2 model(s), and the test error with 12 draws of z (the predictor) and "
        "with one draw.",
        "",
    ]
    rows = []
    for lab in labels:
        m = clean[clean.label == lab]
        err12 = m[(m.split == "test") & (m.eval_mode == "predictor") & (m.metric == "error")]
        err1 = m[(m.split == "test") & (m.metric == "error_one_sample")]
        n1 = int(err1.n.max()) if err1.n.notna().any() else None
        e1 = estimate(err1.groupby("seed").value.mean().tolist(), n1) if not err1.empty and n1 else None
        rows.append([
            f"`{lab}`", _beta(d, lab), str(m.seed.nunique()),
            format_cell(err12.groupby("seed").value.mean().tolist(), n=n1 if err12.seed.nunique() == 1 and n1 else None),
            e1.text if e1 else "—", f"{ref.value:.2f}%",
            (placement(ref.value, e1) if e1 and not reasons else "not comparable: " + "; ".join(reasons) if reasons else "—"),
        ])  # fmt: skip
    lines += markdown_table(["model", "β", "seeds", "test error (12 draws)", "test error (1 draw)", "published (1 draw)", "comparison"], rows)
    lines += ["", f"Published: {ref.source}, {ref.architecture}, β = {ref.beta:g}: {ref.notes}."]
    lines += ["", *embed("embedding", "The K = 2 embedding of the first test images: means of q(z|x) by class with 95% ellipses (first seed)")]
    return lines


__all__ = ["advantage", "embedding_section", "finding_lines", "paper_protocol_section", "verdict"]
