"""report.md and the figures, rebuilt from a synthetic but realistic metrics.csv (no models, no data)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vibbench.core.errors import VibbenchError
from vibbench.reporting.figures import FIGURES
from vibbench.reporting.metrics import format_cell, read_metrics, write_metrics
from vibbench.reporting.report import REPORT_SECTIONS, SECTIONS, build_report, write_report

# label -> (registry model, method, beta, seeds)
MODELS = {
    "mlp_deterministic": ("mlp_deterministic", "deterministic", 0.0, (0, 1)),
    "mlp_vib:beta=0.0001": ("mlp_vib", "vib", 1e-4, (0, 1)),
    "mlp_vib": ("mlp_vib", "vib", 1e-3, (0, 1)),
    "mlp_vib:beta=0.01": ("mlp_vib", "vib", 1e-2, (0, 1)),
    "mlp_dropout": ("mlp_dropout", "dropout", 0.0, (0,)),
    "mlp_vib:latent_dim=2": ("mlp_vib", "vib", 1e-3, (0,)),
}
LINF_EPS = (0.1, 0.2, 0.3)
L2_EPS = (1.0, 2.0)
CORRUPTIONS = ("rotation", "gaussian_noise", "fog")


def clean_test_error(label: str, seed: int) -> float:
    """The synthetic clean test error of (model, seed): a fixed function so tests can recompute cells."""
    base = {"mlp_deterministic": 0.016, "mlp_vib:beta=0.0001": 0.014, "mlp_vib": 0.012, "mlp_vib:beta=0.01": 0.02, "mlp_dropout": 0.015,
            "mlp_vib:latent_dim=2": 0.031}[label]  # fmt: skip
    return base + 0.001 * seed


def _clean(add, label, method, beta, s, rng):
    vib, err = method == "vib", clean_test_error(label, s)
    for split, e in (("val", err - 0.002), ("test", err)):
        for mode in ("predictor", "mean"):
            e_mode = e + (0.001 if mode == "mean" and vib else 0.0)
            add("accuracy", 1 - e_mode, split=split, eval_mode=mode)
            add("error", e_mode, split=split, eval_mode=mode)
            add("nll", 3 * e_mode + 0.01, split=split, eval_mode=mode)
            if vib:
                rate = 2.0 / (beta * 1e3) ** 0.5 * (1 + 0.02 * s)
                add("rate_bits", rate, split=split, eval_mode=mode)
                add("izy_bits", 3.2 - 0.1 * math.log10(beta / 1e-4) - 0.01 * s, split=split, eval_mode=mode)


def _training(add, label, method, beta, s, rng):
    for metric, value in (("loss", 0.05), ("ce", 0.04), ("kl", 3.0 if method == "vib" else 0.0), ("seconds", 120 + 10 * s), ("examples_per_second", 5000 + 100 * s)):
        add(metric, value, split="train", eval_mode="training")


def _robustness(add, label, method, beta, s, rng):
    vib = method == "vib"
    # robustness grows with beta up to 1e-3 (the paper's shape), then falls a bit
    scale = (0.08 if method == "deterministic" else 0.065) if not vib else {1e-4: 0.12, 1e-3: 0.2, 1e-2: 0.15}.get(beta, 0.1)
    cond = {"split": "test", "eval_mode": "predictor", "n": 1000}
    clean_acc = 1 - clean_test_error(label, s)
    for path in ("mean", "eot") if vib else ("direct",):
        bonus = 0.03 if path == "mean" else 0.0
        for attack, norm, grid, strength in (("fgsm", "linf", LINF_EPS, 0.7), ("pgd", "linf", LINF_EPS, 1.0), ("pgd_l2", "l2", L2_EPS, 0.1), ("cw", "l2", L2_EPS, 0.12)):
            for eps in grid:
                acc = clean_acc * math.exp(-strength * eps / scale) + bonus + 0.01 * rng.random()
                add("robust_accuracy", min(acc, clean_acc), attack=attack, path=path, norm=norm, eps=eps, **cond)
        add("median_adv_distance", 1.2 + scale, attack="cw", path=path, norm="l2", **cond)
        add("large_eps_accuracy", 0.0, attack="pgd", path=path, norm="linf", eps=0.9, **cond)
        add("large_eps_accuracy", 0.02, attack="pgd_l2", path=path, norm="l2", eps=20.0, **cond)
        add("zero_grad_fraction", 0.05 if method == "deterministic" else 0.0, attack="gradient", path=path, **cond)
    for norm, grid, strength in (("linf", LINF_EPS, 1.05), ("l2", L2_EPS, 0.13)):
        for eps in grid:
            add("robust_accuracy", clean_acc * math.exp(-strength * eps / scale), attack="worst_case", path="all", norm=norm, eps=eps, **cond)
    add("robust_accuracy", clean_acc, attack="clean", path="all", norm="", eps=0.0, **cond)
    for flag in ("nonmonotone", "large_eps", "blackbox_stronger", "zero_grad"):
        on = (flag == "zero_grad" and method == "deterministic") or (flag == "nonmonotone" and label == "mlp_vib:beta=0.01" and s == 0)
        add(f"flag_{flag}", on, attack="checks", path="all", **cond)


def _calibration(add, label, method, beta, s, rng):
    vib, err = method == "vib", clean_test_error(label, s)
    for mode in ("predictor", "mean") if vib else ("predictor",):
        for calibration, t in (("none", 1.0), ("temperature", 1.4 if not vib else 1.1)):
            ece = (0.012 if calibration == "none" else 0.004) * (1.6 if not vib else 1.0)
            cond = {"split": "test", "eval_mode": mode, "calibration": calibration}
            for metric, value in (("ece", ece), ("mce", 4 * ece), ("adaptive_ece", 0.9 * ece), ("nll", 0.05), ("brier", 0.025), ("accuracy", 1 - err), ("temperature", t)):
                add(metric, value, **cond)
            edges = np.linspace(0, 1, 16)
            counts = np.r_[np.zeros(2), np.geomspace(1, 9500, 13).round()]
            for b in range(15):
                conf = (edges[b] + edges[b + 1]) / 2
                acc = min(1.0, conf - ece * (1 if b > 10 else 3) * (1 + 0.5 * rng.random())) if counts[b] else math.nan
                for metric, value in (("count", counts[b]), ("accuracy", acc), ("confidence", conf if counts[b] else math.nan), ("lower", edges[b]), ("upper", edges[b + 1])):
                    add(f"reliability_{metric}", value, bin=b, **cond)


def _ood(add, label, method, beta, s, rng):
    vib = method == "vib"
    for score in ("msp", "entropy", "rate") if vib else ("msp", "entropy"):
        auroc = {"msp": 0.9, "entropy": 0.92, "rate": 0.97}[score] - (0.05 if not vib else 0.0) + 0.005 * s
        cond = {"split": "test", "eval_mode": "predictor", "ood": "fashion-mnist", "score": score}
        add("auroc", auroc, **cond)
        add("aupr", auroc - 0.02, **cond)
        add("fpr95", 1.5 * (1 - auroc), **cond)
        k = auroc / (1 - auroc)  # a concave ROC curve tpr = fpr^(1/k) whose area is about auroc
        for i, fpr in enumerate(np.linspace(0, 1, 21)):
            add("roc_fpr", fpr, bin=i, **cond)
            add("roc_tpr", fpr ** (1 / k), bin=i, **cond)


def _shift(add, label, method, beta, s, rng):
    vib, err = method == "vib", clean_test_error(label, s)
    for c_i, corruption in enumerate(CORRUPTIONS):
        for severity in range(1, 6):
            acc = (1 - err) * (1 - (0.03 + 0.02 * c_i) * severity ** 1.5 / (2 if vib else 1))
            cond = {"split": "test", "eval_mode": "predictor", "corruption": corruption, "severity": severity, "n": 1000}
            add("accuracy", acc, **cond)
            add("ece", 0.01 + 0.02 * severity * (0.6 if vib else 1.0), **cond)
            add("nll", 0.05 + 0.1 * severity, **cond)


def _paper_protocol(add, label, method, beta, s, rng):
    """The paper's protocol shows VIB far ahead at every budget; the honest one leaves little (evaluation/paper_protocol.py)."""
    vib = method == "vib"
    clean = 1 - clean_test_error(label, s)
    add("adversarial_accuracy", clean, attack="paper_fgs", path="paper", norm="linf", eps=0.0, n=1000)
    for eps in (0.35, 0.5):
        paper = (0.6 if vib else 0.04) - 0.2 * (eps - 0.35)
        add("adversarial_accuracy", paper, attack="paper_fgs", path="paper", norm="linf", eps=eps, n=1000)
        add("adversarial_accuracy", 0.01 if vib else 0.0, attack="paper_fgs", path="honest", norm="linf", eps=eps, n=1000)
        add("adversarial_accuracy_all_draws", 0.0, attack="paper_fgs", path="honest", norm="linf", eps=eps, n=1000)
    add("targeted_success_rate", 0.3 if vib else 1.0, attack="paper_cw", path="paper", norm="l2", n=200)
    add("mean_success_distance", 2.5 if vib else 1.4, attack="paper_cw", path="paper", norm="l2", n=200)
    add("targeted_success_rate", 1.0, attack="paper_cw", path="honest", norm="l2", n=200)
    add("targeted_success_rate_any_draw", 1.0, attack="paper_cw", path="honest", norm="l2", n=200)
    add("mean_success_distance", 1.9 if vib else 1.4, attack="paper_cw", path="honest", norm="l2", n=200)


def _embedding(add, label, method, beta, s, rng):
    if label != "mlp_vib:latent_dim=2":
        return
    for i in range(60):
        c = i % 10
        angle = 2 * math.pi * c / 10
        mu = (4 * math.cos(angle) + 0.5 * rng.standard_normal(), 4 * math.sin(angle) + 0.5 * rng.standard_normal())
        for metric, value in zip(("embedding_mu_0", "embedding_mu_1", "embedding_std_0", "embedding_std_1", "embedding_label"), (*mu, 0.3, 0.2, c)):
            add(metric, value, split="test", eval_mode="predictor", bin=i)
    add("error_one_sample", 0.034, split="test", eval_mode="predictor", n=10000)


SECTION_ROWS = {
    "clean": _clean, "training": _training, "robustness": _robustness, "calibration": _calibration, "ood": _ood, "shift": _shift,
    "paper_protocol": _paper_protocol, "embedding": _embedding,
}  # fmt: skip
"""Section -> function(add, label, method, beta, seed, rng) adding one (model, seed)'s rows of that section."""


def synthetic_rows(models=MODELS, sections=tuple(SECTION_ROWS), seed: int = 0) -> list[dict]:
    """Rows in metrics.csv's schema for every section, with plausible values for MNIST MLPs."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for label, (name, method, beta, seeds) in models.items():
        for s in seeds:
            base = {"run_id": "synthetic-run", "model": name, "label": label, "method": method, "backbone": "mlp", "beta": beta, "seed": s, "dataset": "mnist"}

            def add(metric, value, **cond):
                rows.append(base | cond | {"metric": metric, "value": float(value)})

            for section, add_rows in SECTION_ROWS.items():
                if section in sections:
                    add_rows(add, label, method, beta, s, rng)
    return rows


CONFIG = {
    "profile": "paper",
    "run_id": "synthetic-run",
    "config_hash": "0123456789abcdef" * 4,
    "train": {"epochs": 200, "batch_size": 100, "lr": 1e-4},
    "eval": {
        "attacks": {"attacks": ["fgsm", "pgd", "pgd_l2", "cw"], "pgd_steps": 40, "subset": 1000},
        "calibration_bins": 15,
        "autoattack_label": "AutoAttack-style ensemble (APGD-CE 20 steps; the original runs 100/100/5000)",
    },
}
PROVENANCE = {
    "run_id": "synthetic-run",
    "created": "2025-01-02T03:04:05+00:00",
    "git": {"commit": "abcdef1234567890abcdef1234567890abcdef12", "dirty": True},
    "device": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "versions": {"torch": "2.5.1"},
    "wall_seconds": 3723.0,
    "profile": "paper",
}


def _section(text: str, name: str) -> str:
    """The Markdown of the section `name` of REPORT_SECTIONS (from its heading to the next section heading)."""
    number = list(REPORT_SECTIONS).index(name) + 1
    start = text.index(f"## {number}. ")
    nxt = text.find(f"\n## {number + 1}. ", start)
    return text[start : nxt if nxt >= 0 else len(text)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    write_metrics(synthetic_rows(), run_dir / "metrics.csv")
    (run_dir / "config.json").write_text(json.dumps(CONFIG))
    (run_dir / "provenance.json").write_text(json.dumps(PROVENANCE))
    path = write_report(run_dir)
    return run_dir, path.read_text()


def test_report_has_every_section_in_order_and_its_figures(full_run):
    run_dir, text = full_run
    positions = [text.index(f"## {i}. {title}") for i, title in enumerate(SECTIONS, start=1)]
    assert positions == sorted(positions)
    assert "Not run" not in text
    for name in FIGURES:
        png, pdf = run_dir / "figures" / f"{name}.png", run_dir / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1_000, name
        assert f"](figures/{name}.png)" in text
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):  # every relative link resolves
        assert (run_dir / link).is_file(), link
    assert not list((run_dir / "figures").glob(".*.tmp"))  # no leftovers of atomic writes


def test_cells_show_mean_and_ci_for_two_seeds_and_a_plain_value_for_one(full_run):
    _, text = full_run
    clean = _section(text, "clean")
    two = format_cell([clean_test_error("mlp_deterministic", 0), clean_test_error("mlp_deterministic", 1)])
    assert " ± " in two
    assert f"| `mlp_deterministic` | — | 2 | {two} |" in clean
    assert f"| `mlp_dropout` | — | 1 | {100 * clean_test_error('mlp_dropout', 0):.2f}% |" in clean
    assert "| `mlp_vib` | 0.001 |" in clean  # summary_markdown's row format, reused
    for line in text.splitlines():  # the one-seed model never gets an interval
        if line.startswith("| `mlp_dropout`"):
            assert "±" not in line, line


def test_robustness_tables_and_gradient_masking_flags(full_run):
    _, text = full_run
    rob = _section(text, "robustness")
    assert "**Worst-case robust accuracy, L∞ (%, [95% interval])**" in rob and "**Worst-case robust accuracy, L2 (%, [95% interval])**" in rob
    assert "| model | seeds | n | clean | n (clean) | ε=0.1 | ε=0.2 | ε=0.3 | flags |" in rob
    linf = rob[rob.index("**Worst-case robust accuracy, L∞") : rob.index("**Worst-case robust accuracy, L2")]
    rows = {line.split(" | ")[0][2:]: line for line in linf.splitlines() if line.startswith("| `")}
    assert rows["`mlp_deterministic`"].endswith("| ⚠ zero_grad |")
    assert rows["`mlp_vib:beta=0.01`"].endswith("| ⚠ nonmonotone (1/2 seeds) |")
    assert rows["`mlp_vib`"].endswith("| none |")
    assert "| `mlp_vib` | pgd | eot | 1000 |" in rob  # per attack and path
    assert "AutoAttack-style ensemble (APGD-CE 20 steps" in rob
    assert "Gradient-masking checks" in rob


def test_other_sections_show_their_tables(full_run):
    _, text = full_run
    assert "| `mlp_vib` | mean |" in _section(text, "calibration")  # calibration per eval mode
    assert "| 1.10 ± 0.00 |" in _section(text, "calibration")  # fitted temperature
    ood = _section(text, "ood")
    assert "**OOD set: fashion-mnist**" in ood and "| `mlp_vib` | rate | 97.25 ± " in ood
    shift = _section(text, "shift")
    assert "<details>" in shift and "| `mlp_vib` | fog |" in shift and "severity 5" in shift
    sweep = _section(text, "sweep")
    order = [sweep.index(f"| `{lab}` |") for lab in ("mlp_vib:beta=0.0001", "mlp_vib", "mlp_vib:beta=0.01")]
    assert order == sorted(order)
    assert "worst-case L∞ ε=0.1" in sweep and "worst-case L∞ ε=0.3" in sweep
    assert "| `mlp_deterministic`" not in sweep
    assert "examples / s" in _section(text, "training")


def test_provenance_header(full_run):
    _, text = full_run
    head = text[: text.index("## 1.")]
    assert head.startswith("# vibbench report: synthetic-run")
    for needle in ("2025-01-02T03:04:05", "`abcdef123456` (with uncommitted changes)", "NVIDIA H100 80GB HBM3", "2.5.1", "3723 s", "`paper`", "pgd_steps=40"):
        assert needle in head, needle


@pytest.mark.parametrize(
    "executor, says",
    [
        ({"name": "processes", "workers": 2, "torch_threads_per_job": 1}, "- **jobs ran**: in 2 worker processes at once, 1 torch thread(s) each"),
        ({"name": "local"}, "- **jobs ran**: one after the other in one process (`--executor local`)\n"),
        (None, None),
    ],
)
def test_the_header_says_how_the_jobs_ran(executor, says, tmp_path):
    """With worker processes the per-job times add up to more than the wall time: the header says why."""
    head = _header(tmp_path, {"executor": executor} if executor else {})
    assert (says in head) if says else ("jobs ran" not in head)


def _header(tmp_path, provenance: dict) -> str:
    """The report's header for the synthetic rows with `provenance` added to PROVENANCE."""
    rows = [r for r in synthetic_rows() if "corruption" not in r and "ood" not in r]
    text, _ = build_report(write_metrics(rows, tmp_path / "metrics.csv"), CONFIG, PROVENANCE | provenance, draw=False)
    return text[: text.index("## 1.")]


def test_in_memory_frame_gives_the_same_report_as_the_csv(tmp_path):
    rows = [r for r in synthetic_rows() if "corruption" not in r and "ood" not in r]
    df = write_metrics(rows, tmp_path / "metrics.csv")  # Int64 columns and None, as the runner holds them
    in_memory, _ = build_report(df, CONFIG, PROVENANCE, draw=False)
    from_csv, _ = build_report(read_metrics(tmp_path), CONFIG, PROVENANCE, draw=False)
    assert in_memory == from_csv
    assert "Not run" in _section(in_memory, "ood") and "Not run" in _section(in_memory, "shift")


def test_clean_only_run_says_what_was_not_run(tmp_path):
    models = {k: MODELS[k] for k in ("mlp_deterministic", "mlp_vib")}
    write_metrics(synthetic_rows(models, sections=("clean", "training")), tmp_path / "metrics.csv")
    # a stale figure from an earlier, fuller build must not survive
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "robust_accuracy.png").write_bytes(b"old")
    text = write_report(tmp_path).read_text()
    for name in ("robustness", "calibration", "ood", "shift", "sweep"):
        assert _section(text, name).count("\n") <= 3 and "*Not run:" in _section(text, name), name
    assert "Not run" not in _section(text, "clean") and "Not run" not in _section(text, "training")
    assert "no config.json or provenance.json" in text
    assert (tmp_path / "figures" / "clean_error.png").is_file()
    assert not (tmp_path / "figures" / "robust_accuracy.png").exists()


def test_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(VibbenchError, match="no metrics.csv"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_the_report_loads_without_torchattacks():
    """It takes attack display names from the attack registry and the flags from the robustness module: neither may load torchattacks."""
    code = "import sys, vibbench.reporting.report; print('torchattacks' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]


def test_one_seed_cells_carry_the_wilson_interval_of_their_n(full_run):
    """mlp_dropout has one seed: its worst-case cell is the accuracy and scipy's 95% Wilson interval for n = 1000."""
    from scipy.stats import binomtest

    run_dir, text = full_run
    df = pd.read_csv(run_dir / "metrics.csv")
    sel = df[(df.label == "mlp_dropout") & (df.attack == "worst_case") & (df.norm == "linf") & (df.eps.round(6) == 0.1)]
    (value,), (n,) = sel.value.tolist(), sel.n.tolist()
    ci = binomtest(round(value * n), int(n)).proportion_ci(method="wilson")
    expected = f"{100 * value:.1f} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]%"
    linf = _section(text, "robustness").split("**Worst-case robust accuracy, L2")[0]
    row = next(line for line in linf.splitlines() if line.startswith("| `mlp_dropout` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == str(int(n)) and expected in cells


def test_every_evaluation_section_has_its_place_in_the_report():
    """The runner measures the sections of evaluation.sections.SECTIONS; the report renders each under the same name."""
    from vibbench.evaluation.sections import SECTIONS as EVALUATION_SECTIONS
    from vibbench.reporting.report import REPORT_SECTIONS, unrendered_sections

    assert unrendered_sections() == []
    assert set(EVALUATION_SECTIONS) <= set(REPORT_SECTIONS)
    assert list(REPORT_SECTIONS)[0] == "clean" and len(SECTIONS) == len(REPORT_SECTIONS)


COMMITTED = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "results").glob("*/report.md") if (p.parent / "metrics.csv").exists())


@pytest.mark.parametrize("run_dir", COMMITTED, ids=lambda p: p.name)
def test_committed_reports_are_what_vibbench_report_writes_today(run_dir, tmp_path):
    """A results folder's report.md is `vibbench report` of its metrics.csv: rebuilt by the current code, byte for
    byte. A change to the report's wording or tables shows up here, and is committed with the folders re-rendered."""
    import shutil

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    assert write_report(copy).read_bytes() == (run_dir / "report.md").read_bytes()


@pytest.mark.parametrize(
    "arithmetic, says",
    [
        ({"setting": "auto", "resolved": "bf16"}, "- **attack arithmetic**: bf16 autocast for the gradient attacks; Square (a score-based search), the paper's own attacks and the judge in fp32 (`--attack-precision auto`)"),
        ({"setting": "auto", "resolved": "fp32"}, "- **attack arithmetic**: fp32 (this machine has no native bf16) (`--attack-precision auto`)"),
        ({"setting": "fp32", "resolved": "fp32"}, "- **attack arithmetic**: fp32 (`--attack-precision fp32`)"),
        ({"setting": "auto", "resolved": None}, "- **attack arithmetic**: resolved on each machine that ran a job (`--attack-precision auto`)"),
        (None, None),
    ],
)
def test_the_header_says_how_the_attacks_computed(arithmetic, says, tmp_path):
    head = _header(tmp_path, {"attack_precision": arithmetic} if arithmetic else {})
    assert (says in head) if says else ("attack arithmetic" not in head)
