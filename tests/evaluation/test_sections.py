"""The evaluation harness's sections on small trained models: structure and invariants of the records."""

import math

import pytest

from vibbench.data.corruptions import CORRUPTIONS
from vibbench.evaluation.settings import AttackSettings, EvalConfig
from vibbench.evaluation.sections import calibration_records, noise_images, ood_records, shift_records
from vibbench.core.errors import VibbenchError


def values(records, metric, **match):
    return [r["value"] for r in records if r["metric"] == metric and all(r.get(k) == v for k, v in match.items())]


def test_calibration_records(trained_vib, synthetic):
    recs = calibration_records(trained_vib, synthetic.val, synthetic.test, EvalConfig(), seed=0)
    for mode in ("predictor", "mean"):
        (t,) = values(recs, "temperature", eval_mode=mode, calibration="temperature")
        assert 0.05 <= t <= 20
        (nll_raw,) = values(recs, "nll", eval_mode=mode, calibration="none")
        (nll_ts,) = values(recs, "nll", eval_mode=mode, calibration="temperature")
        assert math.isfinite(nll_raw) and math.isfinite(nll_ts)
        counts = values(recs, "reliability_count", eval_mode=mode, calibration="none")
        assert len(counts) == 15 and sum(counts) == synthetic.test.labels.numel()
        (acc,) = values(recs, "accuracy", eval_mode=mode, calibration="none")
        (acc_ts,) = values(recs, "accuracy", eval_mode=mode, calibration="temperature")
        assert acc == acc_ts  # a temperature never changes the argmax


def test_ood_records_include_the_rate_for_vib_only(trained_vib, trained_mlp, synthetic):
    noise = noise_images(200, seed=0)
    vib = ood_records(trained_vib, synthetic.test, noise, "noise", seed=0)
    det = ood_records(trained_mlp, synthetic.test, noise, "noise", seed=0)
    assert {r["score"] for r in vib} == {"msp", "entropy", "rate"}
    assert {r["score"] for r in det} == {"msp", "entropy"}
    for r in vib + det:
        if r["metric"] in ("auroc", "aupr", "fpr95"):
            assert 0 <= r["value"] <= 1
    # uniform noise is far from the synthetic digits: every score separates it well
    assert min(values(vib, "auroc")) > 0.8
    fpr = values(vib, "roc_fpr", score="msp")
    assert fpr[0] == 0 and fpr[-1] == 1 and fpr == sorted(fpr)


def test_shift_records_cover_every_corruption_and_severity(trained_mlp, synthetic):
    cfg = EvalConfig(severities=(1, 5), shift_subset=100)
    recs = shift_records(trained_mlp, synthetic.test, cfg, seed=0)
    assert {(r["corruption"], r["severity"]) for r in recs} == {(c, s) for c in CORRUPTIONS for s in (1, 5)} | {("none", 0)}
    assert all(0 <= v <= 1 for v in values(recs, "accuracy"))
    # on average over corruptions, severity 5 hurts more than severity 1, and the uncorrupted images least
    assert values(recs, "accuracy", severity=0)[0] >= max(values(recs, "accuracy", severity=1)) - 0.05
    mean = lambda s: sum(values(recs, "accuracy", severity=s)) / len(CORRUPTIONS)
    assert mean(5) < mean(1)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"corruptions": ("snow",)}, "unknown corruption 'snow'"), ({"severities": (6,)}, "severity 6"), ({"shift_subset": 0}, "shift_subset")],
)
def test_bad_eval_config(kwargs, message):
    with pytest.raises(VibbenchError, match=message):
        EvalConfig(**kwargs)


def test_robustness_and_shift_measure_the_runs_evaluation_set(synthetic, trained_mlp):
    """The clean accuracies that robustness and shift record are the predictor's accuracy on exactly the images of
    the evaluation set (recomputed here from the indices), and the worst case has a clean row of its own n."""
    from vibbench.evaluation.inference import predict
    from vibbench.evaluation.sections import robustness_records, shift_records
    from vibbench.evaluation.subsets import evaluation_indices

    test = synthetic.test
    attacks = AttackSettings(attacks=("fgsm", "square"), linf_eps=(0.1,), l2_eps=(1.0,), expensive_eps=(0.1,), subset=40,
                             expensive_subset=12, square_queries=5, batch_size=50)  # fmt: skip
    cfg = EvalConfig(attacks=attacks, corruptions=("rotation",), severities=(1,), shift_subset=30, subset_seed=3)
    idx = evaluation_indices(test.labels.numel(), 40, 3)
    correct = predict(trained_mlp, test.images[idx], seed=0) == test.labels[idx]
    rob = robustness_records(trained_mlp, test, cfg, seed=0)
    clean = {r["n"]: r["value"] for r in rob if r["attack"] == "clean"}
    assert clean == {40: float(correct.float().mean()), 12: float(correct[:12].float().mean())}
    worst = [r for r in rob if r["attack"] == "worst_case"]
    assert worst and all(r["n"] == 12 for r in worst)  # Square (expensive) ran on the first 12: so did the worst case
    shift = shift_records(trained_mlp, test, cfg, seed=0)
    zero = [r for r in shift if r["severity"] == 0 and r["metric"] == "accuracy"]
    assert len(zero) == 1 and zero[0]["n"] == 30
    assert zero[0]["value"] == pytest.approx(float((predict(trained_mlp, test.images[idx[:30]], seed=0) == test.labels[idx[:30]]).double().mean()))
