"""Calibration metrics against hand computations, torchmetrics and synthetic data of known calibration."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vibbench import VibbenchError
from vibbench.evaluation import calibration
from vibbench.evaluation.calibration import (
    adaptive_ece,
    brier,
    calibration_metrics,
    ece,
    fit_temperature,
    mce,
    nll,
    reliability_bins,
)

# Six 3-class predictions: (probabilities, label) -> top-1 confidence, correct?
#   0.40 yes | 0.45 no | 0.90 yes | 0.70 yes | 0.60 no | 0.55 no
HAND_PROBS = torch.tensor(
    [
        [0.40, 0.30, 0.30],
        [0.20, 0.45, 0.35],
        [0.90, 0.05, 0.05],
        [0.10, 0.70, 0.20],
        [0.20, 0.20, 0.60],
        [0.55, 0.25, 0.20],
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0, 2, 0, 1, 0, 1])


def random_predictions(n, c, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, labels


def sample_labels(logits, seed):
    return torch.multinomial(F.softmax(logits.double(), -1), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_hand_computed_ece_and_mce_with_two_bins():
    # bin [0, 0.5): 0.40 yes, 0.45 no -> acc 1/2, conf 0.425, gap 0.075
    # bin [0.5, 1]: 0.90 yes, 0.70 yes, 0.60 no, 0.55 no -> acc 1/2, conf 0.6875, gap 0.1875
    log_probs = HAND_PROBS.log()
    assert ece(log_probs, HAND_LABELS, n_bins=2) == pytest.approx((2 * 0.075 + 4 * 0.1875) / 6, abs=1e-12)
    assert mce(log_probs, HAND_LABELS, n_bins=2, min_count=1) == pytest.approx(0.1875, abs=1e-12)
    # only the bin of four counts with min_count 3; with the default floor of 30 no bin does
    assert mce(log_probs, HAND_LABELS, n_bins=2, min_count=3) == pytest.approx(0.1875, abs=1e-12)
    assert mce(log_probs, HAND_LABELS, n_bins=2, min_count=4) == pytest.approx(0.1875, abs=1e-12)
    assert math.isnan(mce(log_probs, HAND_LABELS, n_bins=2, min_count=5))
    assert math.isnan(mce(log_probs, HAND_LABELS, n_bins=2))


def test_hand_computed_adaptive_ece():
    log_probs = HAND_PROBS.log()
    # two groups of three by confidence: {0.40 y, 0.45 n, 0.55 n} gap |1/3 - 1.4/3| = 0.4/3,
    # {0.60 n, 0.70 y, 0.90 y} gap |2/3 - 2.2/3| = 0.2/3; equal weights
    assert adaptive_ece(log_probs, HAND_LABELS, n_bins=2) == pytest.approx(0.1, abs=1e-12)
    # four groups of sizes 2, 2, 1, 1: {0.40 y, 0.45 n} 0.075, {0.55 n, 0.60 n} 0.575, {0.70 y} 0.3, {0.90 y} 0.1
    expected = (2 * 0.075 + 2 * 0.575 + 0.3 + 0.1) / 6
    assert adaptive_ece(log_probs, HAND_LABELS, n_bins=4) == pytest.approx(expected, abs=1e-12)
    # more bins than examples: one example per group, so it is the mean per-example gap
    per_example = [0.6, 0.45, 0.1, 0.3, 0.6, 0.55]
    assert adaptive_ece(log_probs, HAND_LABELS, n_bins=10) == pytest.approx(sum(per_example) / 6, abs=1e-12)


@pytest.mark.parametrize("n_classes, seed", [(10, 0), (3, 1), (2, 2)])
def test_ece_and_mce_match_torchmetrics(n_classes, seed):
    MulticlassCalibrationError = pytest.importorskip("torchmetrics.classification").MulticlassCalibrationError

    logits, labels = random_predictions(4000, n_classes, seed)
    probs = F.softmax(logits, -1)
    # torchmetrics' max norm takes every non-empty bin: min_count=1
    plain_mce = lambda log_probs, labels: mce(log_probs, labels, min_count=1)  # noqa: E731
    for norm, ours in (("l1", ece), ("max", plain_mce)):
        reference = MulticlassCalibrationError(num_classes=n_classes, n_bins=15, norm=norm)(probs, labels)
        # torchmetrics works in float32; we work in float64
        assert ours(probs.log(), labels) == pytest.approx(float(reference), abs=1e-5)
        # raw logits give the same answer: log_softmax is applied first
        assert ours(logits, labels) == pytest.approx(float(reference), abs=1e-5)


def test_confidence_of_exactly_one_goes_to_the_last_bin():
    # torchmetrics' bucketize puts a confidence of exactly 1.0 in an extra bin [1, 1] of its own;
    # here it shares the last bin [14/15, 1] with 0.95, the usual closed-last-bin convention
    # (and the one that keeps the number of bins equal to n_bins).
    MulticlassCalibrationError = pytest.importorskip("torchmetrics.classification").MulticlassCalibrationError

    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0])  # the certain prediction is wrong, the 0.95 one right
    # one bin: acc 1/2, conf 0.975
    assert ece(probs.log(), labels) == pytest.approx(0.475, abs=1e-12)
    assert mce(probs.log(), labels, min_count=1) == pytest.approx(0.475, abs=1e-12)
    assert reliability_bins(probs.log(), labels)["count"].iloc[-1] == 2
    # torchmetrics: separate bins, (1 - 0) / 2 + (1 - 0.95) / 2 = 0.525 and max 1.0
    l1 = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(probs.float(), labels)
    max_norm = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="max")(probs.float(), labels)
    assert float(l1) == pytest.approx(0.525) and float(max_norm) == pytest.approx(1.0)
    # with no other example in the last bin both conventions agree
    assert ece(probs[:1].log(), labels[:1]) == 1.0


def predictions_with_confidence(confidence, correct, n_classes=10, seed=0):
    """(log-probabilities, labels) whose top-1 confidences are `confidence` (each > 1 / n_classes) and whose top-1
    predictions are right where `correct` is: the predicted class holds `confidence`, the others share the rest."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    predicted = torch.randint(0, n_classes, (confidence.numel(),), generator=g)
    probs = ((1 - confidence) / (n_classes - 1))[:, None].repeat(1, n_classes)
    probs[torch.arange(confidence.numel()), predicted] = confidence
    labels = torch.where(torch.as_tensor(correct), predicted, (predicted + 1) % n_classes)
    return probs.log(), labels


def numpy_mce(confidence, correct, n_bins, min_count):
    """MCE by hand: 15 equal-width bins of [0, 1] (floor of confidence * n_bins, 1.0 in the last), the largest
    |accuracy - mean confidence| over bins holding at least `min_count` examples."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    index = np.minimum(np.floor(confidence * n_bins).astype(int), n_bins - 1)
    gaps = [
        abs(correct[index == b].mean() - confidence[index == b].mean())
        for b in range(n_bins)
        if (index == b).sum() >= min_count
    ]
    return max(gaps) if gaps else math.nan


def test_mce_ignores_a_tiny_bin_with_a_huge_gap():
    rng = np.random.default_rng(0)
    # 400 examples near 0.95, 95% right (gap ~0); 100 near 0.75, 65% right (gap ~0.1); 2 near 0.35, both wrong
    # (gap ~0.35): the two-image bin decides the plain MCE, the floor of 30 drops it. Confidences stay inside
    # their bins [14/15, 1], [11/15, 12/15) and [5/15, 6/15), away from the edges.
    confidence = np.concatenate([rng.uniform(0.94, 0.96, 400), rng.uniform(0.74, 0.76, 100), [0.35, 0.36]])
    correct = np.concatenate([np.arange(400) < 380, np.arange(100) < 65, [False, False]])
    log_probs, labels = predictions_with_confidence(confidence, correct)
    assert calibration.MCE_MIN_BIN_COUNT == 30

    plain = mce(log_probs, labels, min_count=1)
    assert plain == pytest.approx(numpy_mce(confidence, correct, 15, 1), abs=1e-12)
    assert plain == pytest.approx(0.355, abs=1e-12)  # the tiny bin: accuracy 0, confidence 0.355

    floored = mce(log_probs, labels)
    assert floored == pytest.approx(numpy_mce(confidence, correct, 15, 30), abs=1e-12)
    assert floored == pytest.approx(abs(0.65 - confidence[400:500].mean()), abs=1e-12)
    assert floored < 0.15
    assert calibration_metrics(log_probs, labels)["mce"] == pytest.approx(floored, abs=1e-12)
    # a floor between the bins' sizes keeps the bin of 100 and drops the bin of 2 the same way
    assert mce(log_probs, labels, min_count=3) == floored == mce(log_probs, labels, min_count=100)
    # above the largest bin nothing is left
    assert math.isnan(mce(log_probs, labels, min_count=401))
    assert math.isnan(calibration_metrics(log_probs[500:], labels[500:])["mce"])  # the two-image bin alone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mce_with_every_bin_above_the_floor_is_the_plain_max_gap(seed):
    MulticlassCalibrationError = pytest.importorskip("torchmetrics.classification").MulticlassCalibrationError

    rng = np.random.default_rng(seed)
    # confidences uniform over [0.15, 1): 13 bins of about 300 examples each; right with a probability that
    # drifts from the confidence, so the bins' gaps differ
    confidence = rng.uniform(0.15, 1.0, 4000)
    correct = rng.uniform(size=4000) < np.clip(confidence + rng.normal(0, 0.1) + 0.2 * np.sin(7 * confidence), 0, 1)
    counts = np.bincount(np.minimum(np.floor(confidence * 15).astype(int), 14), minlength=15)
    assert counts[counts > 0].min() >= calibration.MCE_MIN_BIN_COUNT
    log_probs, labels = predictions_with_confidence(confidence, correct, seed=seed)

    ours = mce(log_probs, labels)
    assert ours == pytest.approx(mce(log_probs, labels, min_count=1), abs=1e-12)
    assert ours == pytest.approx(numpy_mce(confidence, correct, 15, 1), abs=1e-12)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="max")(log_probs.exp().float(), labels)
    assert ours == pytest.approx(float(reference), abs=1e-5)  # torchmetrics works in float32


def test_brier_and_nll_against_direct_formulas():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2
    assert brier(probs.log(), labels) == pytest.approx(0.8, abs=1e-12)
    assert nll(probs.log(), labels) == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, abs=1e-12)

    logits, labels = random_predictions(5000, 10, 3)
    p = F.softmax(logits.double(), -1)
    direct = (p - F.one_hot(labels, 10).double()).square().sum(1).mean()
    assert brier(logits, labels) == pytest.approx(float(direct), abs=1e-12)
    assert nll(logits, labels) == pytest.approx(float(F.cross_entropy(logits.double(), labels)), abs=1e-12)
    # a certain, correct prediction scores 0, a certain, wrong one the maximum 2
    assert brier(torch.tensor([[0.0, -math.inf]]), torch.tensor([0])) == 0.0
    assert brier(torch.tensor([[0.0, -math.inf]]), torch.tensor([1])) == 2.0


def test_float32_and_float64_agree():
    logits, labels = random_predictions(2000, 10, 4)
    m32 = calibration_metrics(F.log_softmax(logits, -1), labels)
    m64 = calibration_metrics(F.log_softmax(logits.double(), -1), labels)
    assert m32 == pytest.approx(m64, abs=1e-5)


def test_perfectly_calibrated_predictions_have_small_ece():
    logits, _ = random_predictions(200_000, 10, 5, scale=2.0)
    labels = sample_labels(logits, 6)
    assert ece(logits, labels) < 0.01
    assert adaptive_ece(logits, labels) < 0.01
    # the same predictions made overconfident are visibly miscalibrated
    assert ece(logits * 3, labels) > 0.1


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_scaling_recovers_the_temperature_and_lowers_held_out_nll(t_true):
    # 20k validation examples fit T to about 1.5% (worst of 8 seeds)
    logits, _ = random_predictions(40_000, 10, 7)
    labels = sample_labels(logits / t_true, 8)
    val, test = slice(0, 20_000), slice(20_000, None)
    t = fit_temperature(logits[val], labels[val])
    assert t == pytest.approx(t_true, rel=0.03)
    before = calibration_metrics(logits[test], labels[test])
    after = calibration_metrics(logits[test], labels[test], temperature=t)
    assert after["nll"] < before["nll"] - 0.01
    assert after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # T > 0 keeps the argmax
    assert after["nll"] == pytest.approx(nll(logits[test].double() / t, labels[test]), abs=1e-12)
    # log-probabilities give the same temperature as logits
    assert fit_temperature(F.log_softmax(logits[val], -1), labels[val]) == pytest.approx(t, rel=1e-6)


def test_temperature_stays_bounded_when_the_minimum_is_at_zero_or_infinity():
    # every prediction right: NLL keeps falling as T -> 0; L-BFGS stops once it is flat (about 1e-11)
    logits = torch.eye(5).repeat(20, 1) * 4
    labels = torch.arange(5).repeat(20)
    t = fit_temperature(logits, labels)
    assert calibration.T_MIN <= t < 0.2
    assert calibration_metrics(logits, labels, temperature=t)["nll"] < 1e-9
    # labels unrelated to the predictions: NLL falls towards log C as T -> inf; clipped to the bound
    logits, labels = random_predictions(2000, 10, 17)
    assert fit_temperature(logits, labels) == calibration.T_MAX


def test_temperature_falls_back_to_bounded_search_when_lbfgs_fails(monkeypatch):
    logits, _ = random_predictions(2000, 10, 9)
    labels = sample_labels(logits / 2.0, 10)
    expected = fit_temperature(logits, labels)
    monkeypatch.setattr(calibration, "_lbfgs_log_temperature", lambda *_: math.nan)
    assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-5)


def test_temperature_with_zero_probabilities_off_the_label():
    logits, _ = random_predictions(2000, 10, 11)
    labels = sample_labels(logits / 2.0, 12)
    finite = fit_temperature(logits, labels)
    # a class that is never the label given probability 0: contributes nothing at any T
    logits = torch.cat([logits, torch.full((2000, 1), -math.inf)], 1)
    assert fit_temperature(logits, labels) == pytest.approx(finite, rel=1e-6)
    with pytest.raises(VibbenchError, match="infinite"):
        fit_temperature(logits, torch.full((2000,), 10))


def test_reliability_bins_layout_and_counts():
    logits, labels = random_predictions(3000, 10, 13)
    bins = reliability_bins(logits, labels, n_bins=10)
    assert list(bins.columns) == ["bin_lower", "bin_upper", "count", "accuracy", "confidence"]
    assert len(bins) == 10 and bins["count"].sum() == 3000
    assert bins["bin_lower"].iloc[0] == 0.0 and bins["bin_upper"].iloc[-1] == 1.0
    # with 10 classes no top-1 confidence is below 0.1: the first bin is empty
    assert bins["count"].iloc[0] == 0 and math.isnan(bins["accuracy"].iloc[0]) and math.isnan(bins["confidence"].iloc[0])
    filled = bins[bins["count"] > 0]
    assert ((filled["confidence"] >= filled["bin_lower"]) & (filled["confidence"] <= filled["bin_upper"])).all()
    weighted_gap = (filled["count"] / 3000 * (filled["accuracy"] - filled["confidence"]).abs()).sum()
    assert weighted_gap == pytest.approx(ece(logits, labels, n_bins=10), abs=1e-12)


def test_calibration_metrics_keys_and_temperature_one_is_identity():
    logits, labels = random_predictions(1000, 10, 14)
    m = calibration_metrics(logits, labels)
    assert set(m) == {"ece", "mce", "adaptive_ece", "nll", "brier", "accuracy"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["ece"] == ece(logits, labels) and m["nll"] == nll(logits, labels)
    assert m["accuracy"] == float((logits.argmax(1) == labels).double().mean())


def test_handles_a_hundred_thousand_examples_quickly():
    import time

    logits, labels = random_predictions(100_000, 10, 15)
    start = time.perf_counter()
    calibration_metrics(logits, labels, temperature=1.5)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "log_probs, labels, match",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "shape"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "shape"),
        (torch.zeros(4, 3), torch.zeros(4), "integer"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"\[0, 2\]"),
        (torch.tensor([[0.0, math.nan]]), torch.tensor([0]), "NaN"),
        (torch.full((1, 2), -math.inf), torch.tensor([0]), "-inf"),
    ],
)
def test_bad_input_is_a_vibbench_error(log_probs, labels, match):
    with pytest.raises(VibbenchError, match=match):
        ece(log_probs, labels)


def test_bad_bins_and_temperature_are_vibbench_errors():
    logits, labels = random_predictions(10, 3, 16)
    with pytest.raises(VibbenchError, match="n_bins"):
        ece(logits, labels, n_bins=0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(VibbenchError, match="min_count"):
            mce(logits, labels, min_count=bad)
    for bad in (0.0, -1.0, math.inf, math.nan, "hot"):
        with pytest.raises(VibbenchError, match="temperature"):
            calibration_metrics(logits, labels, temperature=bad)
