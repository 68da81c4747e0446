"""OOD detection metrics against hand counts, torchmetrics, and their symmetries."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vibbench import VibbenchError
from vibbench.evaluation.ood import SCORES, aupr, auroc, entropy_score, fpr_at_tpr, msp_score, ood_metrics, roc_curve

# Sorted by score, descending (OOD = out is positive):
#   0.8 out | 0.4 out, 0.4 in (tied) | 0.35 in | 0.2 out | 0.1 in
HAND_IN = [0.1, 0.4, 0.35]
HAND_OUT = [0.8, 0.4, 0.2]


def trapezoid(y, x):
    """Trapezoidal area; numpy 1.x lacks np.trapezoid and numpy 2 deprecates np.trapz."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def test_hand_computed_auroc_counts_a_tie_as_half():
    # pairs (out, in) with out above in: 0.8 beats all 3; 0.4 beats 0.1 and 0.35 and ties 0.4 (1/2);
    # 0.2 beats 0.1: 3 + 2.5 + 1 = 6.5 of 9
    assert auroc(HAND_IN, HAND_OUT) == pytest.approx(6.5 / 9, abs=1e-15)


def test_hand_computed_roc_curve_and_its_area():
    fpr, tpr = roc_curve(HAND_IN, HAND_OUT)
    # thresholds 0.8, 0.4, 0.35, 0.2, 0.1 after the (0, 0) start
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert trapezoid(tpr, fpr) == pytest.approx(13 / 18, abs=1e-15)


def test_hand_computed_aupr():
    # thresholds: 0.8 P 1 R 1/3; 0.4 P 2/3 R 2/3; 0.35 P 1/2 (recall unchanged); 0.2 P 3/5 R 1; 0.1 recall unchanged
    assert aupr(HAND_IN, HAND_OUT) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5, abs=1e-15)


def test_hand_computed_fpr_at_tpr():
    # every OOD example is caught only at threshold 0.2, which also flags the in-scores 0.4 and 0.35
    assert fpr_at_tpr(HAND_IN, HAND_OUT) == pytest.approx(2 / 3)
    # 60% needs 2 of 3 OOD, reached at 0.4, which flags the tied in-score 0.4
    assert fpr_at_tpr(HAND_IN, HAND_OUT, tpr=0.6) == pytest.approx(1 / 3)
    # exactly 19 of 20 OOD examples is 95%: the 20th (the lowest score) is not needed
    s_out = np.arange(20.0)
    assert fpr_at_tpr([0.5, -1.0], s_out) == 0.0
    assert fpr_at_tpr([0.5, -1.0], s_out, tpr=1.0) == 0.5
    assert ood_metrics(HAND_IN, HAND_OUT) == {
        "auroc": auroc(HAND_IN, HAND_OUT),
        "aupr": aupr(HAND_IN, HAND_OUT),
        "fpr95": fpr_at_tpr(HAND_IN, HAND_OUT),
    }


def test_extremes():
    low, high = np.linspace(0, 1, 50), np.linspace(2, 3, 70)
    assert auroc(low, high) == 1.0 and aupr(low, high) == 1.0 and fpr_at_tpr(low, high) == 0.0
    assert auroc(high, low) == 0.0 and fpr_at_tpr(high, low) == 1.0
    # recall only rises once all 70 in-distribution examples are flagged: P = k / (70 + k) at recall k / 50
    assert aupr(high, low) == pytest.approx(sum(k / (70 + k) for k in range(1, 51)) / 50)
    # all scores tied: one threshold, the diagonal
    assert auroc(np.zeros(5), np.zeros(7)) == 0.5
    assert aupr(np.zeros(5), np.zeros(7)) == pytest.approx(7 / 12)
    fpr, tpr = roc_curve(np.zeros(5), np.zeros(7))
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])


def test_identical_distributions_give_about_one_half():
    rng = np.random.default_rng(0)
    assert auroc(rng.normal(size=50_000), rng.normal(size=50_000)) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_is_the_trapezoidal_area_under_roc_curve(seed):
    rng = np.random.default_rng(seed)
    # rounding makes many ties, within and across the two sets
    s_in, s_out = rng.normal(size=3000).round(1), (rng.normal(size=2000) + 0.7).round(1)
    fpr, tpr = roc_curve(s_in, s_out)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert auroc(s_in, s_out) == pytest.approx(trapezoid(tpr, fpr), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics_with_ties(seed):
    classification = pytest.importorskip("torchmetrics.functional.classification")
    binary_auroc, binary_average_precision = classification.binary_auroc, classification.binary_average_precision

    g = torch.Generator().manual_seed(seed)
    # scores in [0, 1] so torchmetrics does not pass them through a sigmoid; rounded to create ties
    s_in = (torch.rand(4000, generator=g, dtype=torch.float64) * 0.8).round(decimals=2)
    s_out = (torch.rand(3000, generator=g, dtype=torch.float64) * 0.8 + 0.2).round(decimals=2)
    scores = torch.cat([s_in, s_out])
    target = torch.cat([torch.zeros(4000), torch.ones(3000)]).long()
    assert auroc(s_in, s_out) == pytest.approx(float(binary_auroc(scores, target)), abs=1e-6)
    assert aupr(s_in, s_out) == pytest.approx(float(binary_average_precision(scores, target)), abs=1e-6)


def test_scores_against_direct_formulas():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 10, generator=g) * 4
    p = F.softmax(logits.double(), -1)
    for given_input in (logits, F.log_softmax(logits, -1), F.log_softmax(logits.double(), -1)):
        torch.testing.assert_close(msp_score(given_input), -p.max(1).values.log(), rtol=0, atol=1e-6)
        torch.testing.assert_close(entropy_score(given_input), -(p * p.log()).sum(1), rtol=0, atol=1e-5)
    # a certain prediction has entropy 0 (0 log 0 = 0), a uniform one log C
    certain_and_uniform = torch.tensor([[0.0, -math.inf, -math.inf], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(entropy_score(certain_and_uniform), torch.tensor([0.0, math.log(3)], dtype=torch.float64))
    torch.testing.assert_close(msp_score(certain_and_uniform), -torch.tensor([1.0, 1 / 3], dtype=torch.float64).log())
    assert SCORES == ("msp", "entropy", "rate")


def test_accepts_tensors_and_is_fast_on_a_hundred_thousand_examples():
    import time

    g = torch.Generator().manual_seed(4)
    s_in, s_out = torch.randn(100_000, generator=g), torch.randn(100_000, generator=g) + 1
    start = time.perf_counter()
    metrics = ood_metrics(s_in, s_out)
    assert time.perf_counter() - start < 5.0
    assert metrics == pytest.approx(ood_metrics(s_in.numpy(), s_out.double().numpy()))
    # two unit-variance normals one apart: AUROC = Phi(1 / sqrt 2)
    assert metrics["auroc"] == pytest.approx(0.5 * (1 + math.erf(0.5)), abs=0.005)


@pytest.mark.parametrize(
    "s_in, s_out, match",
    [([], [1.0], "non-empty"), ([[1.0]], [1.0], "1-D"), ([math.nan], [1.0], "NaN"), ([1.0], [math.nan], "NaN")],
)
def test_bad_scores_are_vibbench_errors(s_in, s_out, match):
    with pytest.raises(VibbenchError, match=match):
        ood_metrics(s_in, s_out)


def test_bad_tpr_is_a_vibbench_error():
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(VibbenchError, match="tpr"):
            fpr_at_tpr([0.0], [1.0], tpr=bad)


score_lists = st.lists(st.floats(allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(score_lists, score_lists)
def test_auroc_swapping_the_sets_gives_one_minus(a, b):
    assert auroc(a, b) + auroc(b, a) == pytest.approx(1.0, abs=1e-12)
    fpr, tpr = roc_curve(a, b)
    assert auroc(a, b) == pytest.approx(trapezoid(tpr, fpr), abs=1e-12)
    assert 0.0 <= aupr(a, b) <= 1.0 and 0.0 <= fpr_at_tpr(a, b) <= 1.0
