"""The published Table 1 numbers, when a run is comparable with them, and the report section that sets them side by
side with ours (synthetic metrics, no models)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from vibbench.reporting.metrics import tidy_metrics
from vibbench.reporting.published import estimate, placement, published_section
from vibbench.reporting.references import MNIST_TEST_SIZE, REFERENCES, comparability, matches, references_for
from vibbench.reporting.report import REPORT_SECTIONS, build_report

# The numbers as issue 15 states them: (registry model, published MNIST test error in %, who measured it).
ISSUE_NUMBERS = {
    ("mlp_deterministic", 1.38, "Alemi"),
    ("mlp_dropout", 1.34, "Alemi"),
    ("mlp_confidence_penalty", 1.36, "Alemi"),
    ("mlp_label_smoothing", 1.40, "Alemi"),
    ("mlp_vib", 1.13, "Alemi"),
    ("mlp_confidence_penalty", 1.17, "Pereyra"),
    ("mlp_label_smoothing", 1.23, "Pereyra"),
    ("mlp_vib", 1.21, "vib_demo"),
}

TRAIN = {
    "dataset": "mnist",
    "epochs": 200,
    "batch_size": 100,
    "lr": 0.0001,
    "adam_betas": [0.5, 0.999],
    "lr_decay": 0.97,
    "lr_decay_every": 2,
    "ema_decay": 0.999,
    "eval_samples": 12,
    "max_train_examples": None,
    "max_eval_examples": None,
}


def model(name, beta=0.0, label=None, **changes):
    method = name.split("_", 1)[1]
    return {"name": name, "label": label or name, "method": method, "backbone": "mlp", "latent_dim": 256, "beta": beta, "eval_samples": 12} | changes


MODELS = [
    model("mlp_deterministic"),
    model("mlp_dropout"),
    model("mlp_label_smoothing"),
    model("mlp_confidence_penalty"),
    model("mlp_vib", beta=0.001),
    model("mlp_vib", beta=0.01, label="mlp_vib:beta=0.01"),
]
PAPER_CONFIG = {"profile": "table1", "train": TRAIN, "models": MODELS}


def errors_frame(errors: dict[str, list[float]], n=None) -> pd.DataFrame:
    """metrics.csv rows of clean test errors (fractions), one per (label, seed), plus the accuracy and mean-mode rows."""
    rows = []
    for label, per_seed in errors.items():
        name = label.split(":")[0]
        for seed, err in enumerate(per_seed):
            base = {"run_id": "r", "model": name, "label": label, "method": name.split("_", 1)[1], "backbone": "mlp", "seed": seed, "dataset": "mnist", "split": "test", "n": n}
            rows += [base | {"eval_mode": "predictor", "metric": "error", "value": err}, base | {"eval_mode": "predictor", "metric": "accuracy", "value": 1 - err}]
            rows += [base | {"eval_mode": "mean", "metric": "error", "value": err + 0.01}]  # must not be the one read
    return tidy_metrics(pd.DataFrame(rows))


def row_of(lines: list[str], label: str, source: str) -> list[str]:
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and cells[0] == f"`{label}`" and source in cells[5]:
            return cells
    raise AssertionError(f"no row for {label} / {source}")


# ---------------------------------------------------------------------------------------------
# the published numbers


def test_the_published_numbers_are_the_issues():
    def who(source):
        return "vib_demo" if "vib_demo" in source else "Pereyra" if source.startswith("Pereyra") else "Alemi"

    assert {(r.method, r.value, who(r.source)) for r in REFERENCES} == ISSUE_NUMBERS
    assert len(REFERENCES) == len(ISSUE_NUMBERS)
    for r in REFERENCES:
        assert (r.dataset, r.metric) == ("mnist", "test error")
        assert "784-1024-1024" in r.architecture and "K = 256" in r.architecture
        assert r.source and r.notes
        assert r.beta == (1e-3 if r.method == "mlp_vib" else None)
    pereyra = [r for r in REFERENCES if r.source.startswith("Pereyra")]
    assert all("Alemi et al. 2017, Table 1" in r.source for r in pereyra)  # quoted there
    demo = next(r for r in REFERENCES if "vib_demo" in r.source)
    assert "EMA" in demo.notes and "12" in demo.notes and "about" in demo.notes


def test_every_referenced_method_is_a_registry_model():
    from vibbench.models.registry import list_models

    assert {r.method for r in REFERENCES} <= set(list_models("mlp_*"))


# ---------------------------------------------------------------------------------------------
# which runs and models are comparable


def test_the_paper_protocol_matches():
    assert comparability(PAPER_CONFIG, ["mnist"]) == [] and matches(PAPER_CONFIG)
    assert matches({"train": TRAIN | {"adam_betas": (0.5, 0.999), "lr": 1e-4}})  # tuples, floats written otherwise


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"epochs": 10}, "trained 10 epochs, the paper 200"),
        ({"batch_size": 50}, "batch_size 50, the paper's 100"),
        ({"dataset": "fashion-mnist"}, "dataset fashion-mnist, the paper's mnist"),
        ({"lr": 1e-3}, "lr 0.001, the paper's 0.0001"),
        ({"adam_betas": [0.9, 0.999]}, "adam_betas (0.9, 0.999), the paper's (0.5, 0.999)"),
        ({"lr_decay": 1.0}, "lr_decay 1, the paper's 0.97"),
        ({"max_train_examples": 1000}, "only the first 1000 training images"),
        ({"max_eval_examples": 500}, "only the first 500 test images"),
        ({"epochs": None}, "does not record epochs"),
        ({"epochs": True}, "trained True epochs"),
    ],
)
def test_a_run_off_the_protocol_does_not_match(changes, reason):
    config = {"train": TRAIN | changes, "models": MODELS}
    reasons = comparability(config)
    assert not matches(config) and any(reason in r for r in reasons), reasons


def test_a_run_without_training_settings_or_on_other_rows_does_not_match():
    assert not matches({}) and not matches({"models": MODELS}) and not matches({"train": "?"})
    assert "protocol is unknown" in comparability({})[0]
    assert comparability(PAPER_CONFIG, ["fashion-mnist"]) == ["its rows are on fashion-mnist, the published numbers on mnist"]


def test_the_profiles_quick_does_not_match_and_table1_and_paper_do():
    from vibbench.runs.config import make_run_config

    for profile, comparable in (("quick", False), ("table1", True), ("paper", True)):
        config = json.loads(json.dumps(make_run_config(profile, device="cpu").to_dict()))  # as config.json holds it
        assert matches(config, ["mnist"]) == comparable, (profile, comparability(config))
        if profile == "table1":
            assert [len(references_for(m)) for m in config["models"]] == [1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("entry", "count"),
    [
        (model("mlp_vib", beta=0.001), 2),
        (model("mlp_vib", beta=1e-3 * (1 + 1e-12)), 2),  # a float that prints as 0.001
        (model("mlp_vib", beta=0.01), 0),  # the published VIB numbers are for beta = 1e-3 only
        (model("mlp_vib", beta=0.001, eval_samples=1), 0),
        (model("mlp_vib", beta=0.001, latent_dim=128), 0),
        (model("mlp_vib", beta=0.001, backbone="conv"), 0),
        ({k: v for k, v in model("mlp_vib", beta=0.001).items() if k != "beta"}, 0),
        (model("mlp_deterministic"), 1),
        (model("mlp_label_smoothing"), 2),
        ({k: v for k, v in model("mlp_dropout").items() if k != "latent_dim"}, 0),
        (model("conv_dropout", backbone="conv"), 0),
        ("mlp_vib", 0),
    ],
)
def test_references_for_a_model(entry, count):
    assert len(references_for(entry)) == count


# ---------------------------------------------------------------------------------------------
# our interval and the sentence


def test_one_seed_is_scipys_wilson_interval_on_the_number_of_errors():
    est = estimate([0.0178], 10_000)
    ci = stats.binomtest(178, 10_000).proportion_ci(confidence_level=0.95, method="wilson")
    assert (est.seeds, est.n, est.value) == (1, 10_000, pytest.approx(1.78))
    assert est.low == pytest.approx(100 * ci.low, abs=1e-9) and est.high == pytest.approx(100 * ci.high, abs=1e-9)


def test_several_seeds_are_scipys_t_interval_over_seeds():
    errors = [0.0121, 0.0130, 0.0118]
    est = estimate(errors, 10_000)
    low, high = stats.t.interval(0.95, len(errors) - 1, loc=sum(errors) / 3, scale=stats.sem(errors))
    assert est.seeds == 3 and est.low == pytest.approx(100 * low) and est.high == pytest.approx(100 * high)
    assert est.text.startswith(f"{100 * sum(errors) / 3:.2f} ± ")


def test_the_sentence_says_inside_or_by_how_much_outside():
    est = estimate([0.0178], 10_000)  # [1.5530.., 2.0399..]
    assert placement(1.80, est) == f"The published 1.80% lies within our 95% interval [{est.low:.2f}, {est.high:.2f}]%."
    assert placement(1.13, est) == f"The published 1.13% lies {est.low - 1.13:.2f} points below our 95% interval [{est.low:.2f}, {est.high:.2f}]%."
    assert placement(2.50, est) == f"The published 2.50% lies {2.50 - est.high:.2f} points above our 95% interval [{est.low:.2f}, {est.high:.2f}]%."
    assert "less than 0.01 points below" in placement(est.low - 0.001, est)
    assert "within" in placement(est.low, est) and "within" in placement(est.high, est)


# ---------------------------------------------------------------------------------------------
# the section


def test_a_matching_run_shows_ours_the_published_values_the_difference_and_the_sentence():
    df = errors_frame({"mlp_deterministic": [0.0140], "mlp_vib": [0.0178], "mlp_dropout": [0.0130, 0.0136, 0.0139], "mlp_vib:beta=0.01": [0.02]})
    lines = published_section(df, {"config": PAPER_CONFIG})
    text = "\n".join(lines)
    assert "not comparable" not in text and "follows the protocol" in text

    det = row_of(lines, "mlp_deterministic", "Alemi et al. 2017, Table 1")
    est = estimate([0.0140], MNIST_TEST_SIZE)
    assert det[1:7] == ["1", "10000", est.text, "1.38%", "Alemi et al. 2017, Table 1", "+0.02"]
    assert det[7] == placement(1.38, est) and "within" in det[7]

    vib = row_of(lines, "mlp_vib", "Alemi et al. 2017, Table 1")
    est = estimate([0.0178], MNIST_TEST_SIZE)
    assert vib[3] == est.text and vib[4] == "1.13%" and vib[6] == "+0.65"
    assert vib[7] == f"The published 1.13% lies {est.low - 1.13:.2f} points below our 95% interval [{est.low:.2f}, {est.high:.2f}]%."
    assert row_of(lines, "mlp_vib", "vib_demo")[4] == "1.21%"

    dropout = row_of(lines, "mlp_dropout", "Alemi")
    assert dropout[1] == "3" and " ± " in dropout[3] and dropout[6] == f"{100 * (0.0130 + 0.0136 + 0.0139) / 3 - 1.34:+.2f}"

    assert "`mlp_vib:beta=0.01`" not in text  # no published number for beta 1e-2
    ls = row_of(lines, "mlp_label_smoothing", "Pereyra")  # in the config, no rows in metrics.csv
    assert ls[3] == "—" and ls[6] == "—" and "no clean test error" in ls[7]


def test_the_test_set_size_comes_from_the_rows_when_they_give_it():
    lines = published_section(errors_frame({"mlp_deterministic": [0.014]}, n=5000), {"config": PAPER_CONFIG})
    row = row_of(lines, "mlp_deterministic", "Alemi")
    assert row[2] == "5000" and row[3] == estimate([0.014], 5000).text


CLAIMS = re.compile(r"ours − published|lies within|points (below|above)|\| [+-]\d")


@pytest.mark.parametrize(
    "config",
    [
        PAPER_CONFIG | {"train": TRAIN | {"epochs": 10}},
        PAPER_CONFIG | {"train": TRAIN | {"batch_size": 50}},
        {"models": MODELS},
        {},
        PAPER_CONFIG | {"models": [model("mlp_vib", beta=0.01)]},  # the protocol, but no model with a published number
    ],
)
def test_a_run_that_does_not_match_never_shows_a_difference(config):
    df = errors_frame({"mlp_deterministic": [0.0140], "mlp_vib": [0.0113], "mlp_vib:beta=0.01": [0.02]})
    text = "\n".join(published_section(df, {"config": config}))
    assert not CLAIMS.search(text), text
    assert "for orientation only: not comparable to this run" in text
    for r in REFERENCES:  # the published numbers are still listed
        assert f"{r.value:.2f}%" in text
    if config.get("train", {}).get("epochs") == 10:
        first = text.splitlines()[0]
        assert "200 epochs" in first and "not comparable" in first and "trained 10 epochs" in first


def test_rows_on_another_dataset_are_not_compared():
    df = errors_frame({"mlp_deterministic": [0.0140]})
    df["dataset"] = "fashion-mnist"
    text = "\n".join(published_section(df, {"config": PAPER_CONFIG}))
    assert not CLAIMS.search(text) and "its rows are on fashion-mnist" in text


def test_the_section_comes_right_after_clean_in_the_report():
    assert list(REPORT_SECTIONS)[:2] == ["clean", "published"]
    text, _ = build_report(errors_frame({"mlp_vib": [0.0113]}), PAPER_CONFIG, draw=False)
    section = text[text.index("## 2. Published references (Table 1)") : text.index("## 3. ")]
    assert "| `mlp_vib` | 1 | 10000 | 1.13 [" in section and "lies within" in section


def test_the_committed_quick_runs_are_not_comparable():
    root = Path(__file__).resolve().parents[2] / "results"
    for config_path in sorted(root.glob("quick-*/config.json")):
        config = json.loads(config_path.read_text())
        assert comparability(config) == ["trained 10 epochs, the paper 200"]
        report = (config_path.parent / "report.md").read_text()
        section = report[report.index("## 2. Published references (Table 1)") : report.index("## 3. ")]
        assert "this run is not comparable" in section and not CLAIMS.search(section)

