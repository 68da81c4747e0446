"""Robustness: the harness against torchattacks run directly, worst-case aggregation, masking checks."""

import dataclasses
import math

import pytest
import torch
import torchattacks
from torch import nn

from vibbench import VibbenchError
from vibbench.evaluation.attacks.adversarial import adversarial_examples
from vibbench.evaluation.attacks.cw import PositiveLogits
from vibbench.evaluation.attacks.target import AttackTarget
from vibbench.evaluation.settings import AttackSettings, autoattack_label, check_eps
from vibbench.evaluation.masking import FLAGS, masking_flags
from vibbench.evaluation.robustness import evaluate_robustness, summary_records, worst_case

N = 100


def small(**kw):
    base = dict(
        attacks=("fgsm", "pgd"),
        linf_eps=(0.1, 0.3),
        l2_eps=(1.0,),
        expensive_eps=(0.3,),
        large_eps=(("linf", 0.9),),
        subset=N,
        expensive_subset=N,
        pgd_steps=10,
        square_queries=300,
        batch_size=N,
    )
    return AttackSettings(**(base | kw))


def by(records, metric, **match):
    return [r["value"] for r in records if r["metric"] == metric and all(r[k] == v for k, v in match.items())]


def test_harness_equals_torchattacks_run_directly(trained_mlp, synthetic):
    """Without early stopping (which only ever lowers PGD's accuracy: the next test)."""
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    records = evaluate_robustness(trained_mlp, x, y, small(early_stop=False), seed=5)
    for eps in (0.1, 0.3):
        adv = torchattacks.FGSM(trained_mlp, eps=eps)(x, y)
        direct = (trained_mlp(adv).argmax(1) == y).float().mean().item()
        assert by(records, "robust_accuracy", attack="fgsm", eps=eps) == [direct]
        torch.manual_seed(5)  # the harness seeds the attack's random start the same way
        adv = torchattacks.PGD(trained_mlp, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)(x, y)
        direct = (trained_mlp(adv).argmax(1) == y).float().mean().item()
        assert by(records, "robust_accuracy", attack="pgd", eps=eps) == [direct]
    clean = by(records, "robust_accuracy", attack="clean")[0]
    assert clean > 0.8 and by(records, "robust_accuracy", attack="pgd", eps=0.3)[0] < clean


def test_early_stop_only_lowers_pgd_accuracy(trained_mlp, trained_vib, synthetic):
    """PGD that stops on images the judge has broken reports at most the plain attack's accuracy on a deterministic
    function (a deterministic model, a stochastic one's mean path) and within noise on the EOT path, whose other
    images take their steps under other draws (early stopping never freezes an image some draw still gets right).
    FGSM, a single step, is unchanged. (On these easy images the two agree; test_attacks.py shows the
    mechanism: frozen images broken, the others on the plain iterates.)"""
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    for model in (trained_mlp, trained_vib):
        s = dict(attacks=("fgsm", "pgd", "pgd_l2"), eot_iter=2, judge_draws=2)
        plain = evaluate_robustness(model, x, y, small(early_stop=False, **s), seed=5)
        early = evaluate_robustness(model, x, y, small(**s), seed=5)
        keys = [(r["attack"], r["path"], r["eps"]) for r in plain if r["metric"] == "robust_accuracy" and r["attack"] in ("pgd", "pgd_l2")]
        assert len(keys) >= 3
        for attack, path, eps in keys:
            noise = 0.02 if path == "eot" else 0.0  # 4 of the 200 image-draws
            assert by(early, "robust_accuracy", attack=attack, path=path, eps=eps)[0] <= by(plain, "robust_accuracy", attack=attack, path=path, eps=eps)[0] + noise
        assert by(early, "robust_accuracy", attack="fgsm") == by(plain, "robust_accuracy", attack="fgsm")


def test_autoattack_takes_the_square_rows_result_instead_of_running_square_again(trained_mlp, synthetic, monkeypatch):
    """Square runs once per budget (its own row); the ensemble's Square part takes that result, so the ensemble
    leaves robust no image Square broke."""
    calls = []
    real = torchattacks.Square.forward
    monkeypatch.setattr(torchattacks.Square, "forward", lambda self, *a: calls.append(len(a[0])) or real(self, *a))
    x, y = synthetic.test.images[:40], synthetic.test.labels[:40]
    s = small(attacks=("square", "autoattack"), subset=40, expensive_subset=40, apgd_steps=2, fab_steps=2, square_queries=100, expensive_eps=(0.1, 0.3))
    records = evaluate_robustness(trained_mlp, x, y, s, seed=0)
    assert calls == [40, 40]  # the Square row at 0.1 and 0.3; none from the ensemble
    for eps in (0.1, 0.3):
        assert by(records, "robust_accuracy", attack="autoattack", eps=eps)[0] <= by(records, "robust_accuracy", attack="square", eps=eps)[0]
    without_row = evaluate_robustness(trained_mlp, x, y, dataclasses.replace(s, attacks=("autoattack",)), seed=0)
    assert len(calls) > 2 and by(without_row, "robust_accuracy", attack="autoattack", eps=0.3)  # alone, it runs its own Square


def test_each_attack_and_path_has_its_wall_time(trained_vib, synthetic):
    """One timing row per attack and path (and one for each path's checks), named by the section, none with a
    measured quantity's metric: they go to timing.csv."""
    x, y = synthetic.test.images[:20], synthetic.test.labels[:20]
    records = evaluate_robustness(trained_vib, x, y, small(pgd_steps=2, eot_iter=1, judge_draws=1), seed=0)
    timing = [r for r in records if r["metric"] == "seconds"]
    assert sorted((r["attack"], r["path"]) for r in timing) == sorted(
        (a, p) for a in ("checks", "fgsm", "pgd") for p in ("mean", "eot")
    )
    assert {r["eval_mode"] for r in timing} == {"robustness"} and all(r["value"] >= 0 for r in timing)
    assert {r["norm"] for r in timing if r["attack"] != "checks"} == {"linf"}


def test_worst_case_on_a_constructed_case():
    t = lambda *bits: torch.tensor(bits, dtype=torch.bool)
    robust = {
        ("fgsm", "direct", "linf", 0.1): t(1, 1, 1, 0),
        ("pgd", "direct", "linf", 0.1): t(1, 0, 1, 0),
        ("fgsm", "direct", "linf", 0.3): t(1, 1, 0, 0),
        ("pgd", "direct", "linf", 0.3): t(1, 1, 1, 0),  # point 1 "recovers" at 0.3: still broken
        ("cw", "direct", "l2", 1.0): t(0, 1, 1, 1, 1, 1),  # a longer subset is cut to the shortest
    }
    worst = worst_case(robust)
    assert worst[("linf", 0.1)].tolist() == [True, False, True, False]
    assert worst[("linf", 0.3)].tolist() == [True, False, False, False]
    assert worst[("l2", 1.0)].tolist() == [False, True, True, True, True, True]


def test_masking_flags_on_constructed_tables():
    key = lambda a, e, p="direct", n="linf": (a, p, n, e)
    acc = {key("pgd", 0.1): 0.5, key("pgd", 0.3): 0.2, key("fgsm", 0.3): 0.3, key("square", 0.3): 0.25}
    n = dict.fromkeys(acc, 1000)
    quiet = masking_flags(acc, n, {key("pgd", 0.9): 0.0}, {"direct": 0.0})
    assert not any(quiet.values()) and set(quiet) == set(FLAGS)
    loud = masking_flags(acc | {key("pgd", 0.3): 0.6, key("square", 0.3): 0.1}, n, {key("pgd", 0.9): 0.5}, {"direct": 0.2})
    assert loud["nonmonotone"] == [key("pgd", 0.1), key("pgd", 0.3)]
    assert loud["blackbox_stronger"] == [key("pgd", 0.3), key("fgsm", 0.3)]  # the white-box rows Square beat
    assert set(loud["large_eps"]) == set(loud["zero_grad"]) == set(acc)  # path-wide: every row of the path


def test_masking_compares_rows_of_different_lengths_on_the_images_they_share():
    """Square and C&W run on the first 200 images, PGD on 1000: a flag compares them on those 200, not a 200-image
    accuracy with a 1000-image one (whose extra 800 images may be easier or harder)."""
    key = lambda a, e, p="direct", n="linf": (a, p, n, e)
    sq, pgd, fgsm, cw, pgd2 = key("square", 0.1), key("pgd", 0.1), key("fgsm", 0.1), key("cw", 1.0, n="l2"), key("pgd_l2", 1.0, n="l2")
    n = {sq: 200, pgd: 1000, fgsm: 1000, cw: 200, pgd2: 1000}
    # over 1000 images PGD leaves 40% and Square 33% (7 points: would flag), but on Square's 200 images PGD leaves 36%
    acc = {sq: 0.33, pgd: 0.40, fgsm: 0.60, cw: 0.50, pgd2: 0.45}
    prefix = {pgd: {200: 0.36}, fgsm: {200: 0.55}, pgd2: {200: 0.35}}
    flags = masking_flags(acc, n, {}, {}, prefix=prefix)
    assert flags["blackbox_stronger"] == []  # 33% against 36% on the same images: within the margin
    assert flags["cw_weaker"] == [cw]  # 50% against 35% on the same images (against 45% over 1000: quiet)
    prefix[pgd][200] = 0.40  # now Square beats PGD by 7 points on the same images
    assert masking_flags(acc, n, {}, {}, prefix=prefix)["blackbox_stronger"] == [pgd, fgsm]
    with pytest.raises(ValueError, match="prefix"):  # never silently over different images
        masking_flags(acc, n, {}, {})


def test_summary_flags_use_the_shared_images():
    """End to end through summary_records: the white-box row's first 200 images are what Square is held against."""
    t = lambda robust_first, n_first, robust_rest, n_rest: torch.tensor([True] * robust_first + [False] * (n_first - robust_first) + [True] * robust_rest + [False] * (n_rest - robust_rest))
    robust = {
        ("square", "direct", "linf", 0.1): t(60, 200, 0, 0),  # 30%
        ("pgd", "direct", "linf", 0.1): t(64, 200, 600, 800),  # 32% on Square's images, 66% over 1000
    }
    records = summary_records(robust, {}, {}, {}, torch.ones(1000, dtype=torch.bool), torch.arange(1000), 200)
    fired = {r["metric"] for r in records if r["metric"].startswith("flag_") and r["attack"] != "checks"}
    assert "flag_blackbox_stronger" not in fired  # over 1000 images it would have (30% against 66%)
    robust[("square", "direct", "linf", 0.1)] = t(20, 200, 0, 0)  # 10% against 32% on the same images: it fires
    records = summary_records(robust, {}, {}, {}, torch.ones(1000, dtype=torch.bool), torch.arange(1000), 200)
    assert [r["attack"] for r in records if r["metric"] == "flag_blackbox_stronger" and r["attack"] != "checks"] == ["pgd"]
    shared = [(r["attack"], r["n"], round(r["value"], 6)) for r in records if r["metric"] == "robust_accuracy_shared"]
    assert shared == [("pgd", 200, 0.32)]  # what the check held against Square, recorded for the reader


def test_the_report_shows_what_a_flag_compared():
    import pandas as pd

    from vibbench.reporting.report import _shared_note

    shared = pd.DataFrame(
        [
            {"label": "m", "path": "eot", "norm": "linf", "eps": 0.1, "attack": "pgd", "n": 200, "seed": 0, "value": 0.19},
            {"label": "m", "path": "eot", "norm": "linf", "eps": 0.1, "attack": "fgsm", "n": 200, "seed": 0, "value": 0.405},
            {"label": "m", "path": "mean", "norm": "linf", "eps": 0.1, "attack": "pgd", "n": 200, "seed": 0, "value": 0.5},
        ]
    )
    assert _shared_note(shared, "m", "eot", "linf", 0.1) == " (compared on the first 200 images: there pgd 19.0%, fgsm 40.5%)"
    assert _shared_note(shared, "m", "eot", "linf", 0.3) == ""  # none recorded (runs before the records existed): nothing


def test_large_eps_expects_near_zero_not_chance():
    key = ("pgd", "direct", "linf", 0.1)
    for value, fires in ((0.0, False), (0.02, False), (0.05, True), (0.10, True)):  # the old check waited for > 20%
        flags = masking_flags({key: 0.5}, {key: 1000}, {("pgd", "direct", "linf", 0.9): value}, {"direct": 0.0}, large_n=1000)
        assert bool(flags["large_eps"]) is fires, value


def test_new_masking_checks_name_the_rows_they_doubt():
    k = lambda a, p, e, n="linf": (a, p, n, e)
    acc = {
        k("pgd", "mean", 0.1): 0.30, k("pgd", "eot", 0.1): 0.55,  # EOT far weaker than mean: eot_weaker
        k("fgsm", "mean", 0.1): 0.40, k("fgsm", "eot", 0.1): 0.42,  # within the margin: quiet
        k("square", "eot", 0.1): 0.90,  # far above the best white-box on the EOT path: blackbox_weaker
        k("pgd_l2", "mean", 1.0, "l2"): 0.20, k("cw", "mean", 1.0, "l2"): 0.45,  # cw_weaker
    }
    n = dict.fromkeys(acc, 500)
    disagreement = dict.fromkeys(acc, 0.0) | {k("fgsm", "eot", 0.1): 0.3}
    flags = masking_flags(acc, n, {}, {}, disagreement, stochastic=True)
    assert flags["eot_weaker"] == [k("pgd", "eot", 0.1), k("square", "eot", 0.1)] or flags["eot_weaker"] == [k("pgd", "eot", 0.1)]
    assert flags["blackbox_weaker"] == [k("square", "eot", 0.1)]
    assert flags["cw_weaker"] == [k("cw", "mean", 1.0, "l2")]
    assert flags["judge_noisy"] == [k("fgsm", "eot", 0.1)]
    assert not masking_flags(acc, n, {}, {}, stochastic=False)["blackbox_weaker"]  # a deterministic model's Square is not noise-limited


def test_worst_case_is_conservative_over_draws():
    t = lambda *rows: torch.tensor(rows, dtype=torch.bool)
    robust = {("pgd", "eot", "linf", 0.1): t((1, 1, 0), (1, 0, 0)), ("pgd", "mean", "linf", 0.1): t((1, 1, 1))}
    assert worst_case(robust)[("linf", 0.1)].tolist() == [True, False, False]  # broken under any draw is broken


class Quantized(nn.Module):
    """Gradient masking by a non-differentiable input quantization: every input gradient is zero."""

    stochastic = False
    num_classes = 10

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mean_mode = inner, False

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


class FarMasked(nn.Module):
    """Masks gradients only far (L-inf > 0.2) from the clean images: PGD's random start at eps 0.3
    lands there and the attack stalls, so robust accuracy rises with eps."""

    stochastic = False
    num_classes = 10

    def __init__(self, inner, clean):
        super().__init__()
        self.inner, self.clean, self.mean_mode = inner, clean.flatten(1), False

    def forward(self, x):
        dist = (x.flatten(1)[:, None, :] - self.clean[None]).abs().amax(-1).min(-1).values
        far = (dist > 0.2)[:, None]
        return torch.where(far, self.inner(x.detach()), self.inner(x))


def flags_of(records):
    return {r["metric"][5:]: bool(r["value"]) for r in records if r["metric"].startswith("flag_") and r["attack"] == "checks"}


def test_masking_checks_stay_quiet_on_a_normal_model(trained_mlp, synthetic):
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    flags = flags_of(evaluate_robustness(trained_mlp, x, y, small(attacks=("fgsm", "pgd", "square")), seed=0))
    assert flags == dict.fromkeys(FLAGS, False)


def test_masking_checks_fire_on_quantized_inputs(trained_mlp, synthetic):
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    flags = flags_of(evaluate_robustness(Quantized(trained_mlp), x, y, small(attacks=("fgsm", "pgd", "square")), seed=0))
    assert flags["zero_grad"] and flags["large_eps"] and flags["blackbox_stronger"]


def test_nonmonotone_check_fires_when_gradients_vanish_at_large_eps(trained_mlp, synthetic):
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    model = FarMasked(trained_mlp, x)
    records = evaluate_robustness(model, x, y, small(attacks=("pgd",), linf_eps=(0.1, 0.3)), seed=0)
    assert by(records, "robust_accuracy", attack="pgd", eps=0.3)[0] > by(records, "robust_accuracy", attack="pgd", eps=0.1)[0]
    assert flags_of(records)["nonmonotone"]


def test_stochastic_models_are_attacked_through_both_paths(trained_vib, synthetic):
    x, y = synthetic.test.images[:40], synthetic.test.labels[:40]
    records = evaluate_robustness(trained_vib, x, y, small(attacks=("fgsm", "pgd", "cw"), subset=40, expensive_subset=40, eot_iter=2, cw_steps=10), seed=0)
    paths = {r["path"] for r in records if r["metric"] == "robust_accuracy" and r["attack"] in ("fgsm", "pgd", "cw")}
    assert paths == {"mean", "eot"}
    worst = by(records, "robust_accuracy", attack="worst_case", norm="linf", eps=0.3)[0]
    per_attack = [v for v in by(records, "robust_accuracy", norm="linf", eps=0.3) if v is not None]
    assert worst <= min(per_attack)
    assert all(math.isfinite(v) for v in by(records, "robust_accuracy"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: AttackSettings(attacks=("deepfool",)), "unknown attack 'deepfool'"),
        (lambda: check_eps("l1", 1.0), "no attack for norm 'l1'"),
        (lambda: AttackSettings(linf_eps=(0.1, 1.5)), "outside [0, 1]"),
        (lambda: AttackSettings(linf_eps=(-0.1,)), "eps must be a finite number >= 0"),
        (lambda: AttackSettings(subset=0), "subset must be a positive integer"),
        (lambda: AttackSettings(early_stop="yes"), "early_stop must be true or false"),
    ],
)
def test_bad_attack_input(call, message):
    with pytest.raises(VibbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_empty_subset_is_refused(trained_mlp):
    empty = torch.zeros(0, 1, 28, 28)
    with pytest.raises(VibbenchError, match="subset is empty"):
        evaluate_robustness(trained_mlp, empty, torch.zeros(0, dtype=torch.long), small())
    with pytest.raises(VibbenchError, match="subset is empty"):
        adversarial_examples(trained_mlp, empty, torch.zeros(0, dtype=torch.long), "fgsm", 0.1, "direct", small())


def test_autoattack_is_only_called_standard_with_the_original_settings():
    assert autoattack_label(AttackSettings()).startswith("AutoAttack (standard")
    assert "AutoAttack-style" in autoattack_label(AttackSettings(apgd_steps=10))


def test_cw_breaks_models_whose_outputs_are_log_probabilities(trained_vib, trained_mlp, synthetic):
    # torchattacks' CW margin is constantly 0 on all-negative outputs; PositiveLogits fixes it exactly
    x = synthetic.test.images[:20]
    target = AttackTarget(trained_vib, "mean")
    with torch.no_grad():
        out, shifted = target(x), PositiveLogits(target)(x)
    assert (out <= 0).all() and (shifted >= 1).all()
    torch.testing.assert_close(shifted.log_softmax(1), out.log_softmax(1))
    for model in (trained_vib, trained_mlp):
        records = evaluate_robustness(model, x, synthetic.test.labels[:20], small(attacks=("cw",), subset=20, expensive_subset=20, cw_steps=30, l2_eps=(5.0,)), seed=0)
        assert max(by(records, "robust_accuracy", attack="cw")) < by(records, "robust_accuracy", attack="clean")[0]


def test_ensemble_bookkeeping_is_the_judges(trained_mlp, synthetic, monkeypatch):
    """Each part attacks only the images the judge still finds robust; a later failure (the clean image back) never
    undoes an earlier success; the result is the judge's verdict on the strongest image kept."""
    from vibbench.evaluation.attacks import autoattack

    x, y = synthetic.test.images[:40], synthetic.test.labels[:40]
    with torch.no_grad():
        pred = trained_mlp(x).argmax(1)
    clean_ok = pred == y
    donor = {c: x[(pred == c) & clean_ok][0] for c in range(10) if ((pred == c) & clean_ok).any()}
    broken = [i for i in range(40) if clean_ok[i]][:5]
    seen = []

    def breaker(images, labels):  # replaces the first five robust images by an image of another class
        out = images.clone()
        for k, label in enumerate(labels.tolist()):
            if len(seen) == 0 and k < 5:
                out[k] = donor[next(c for c in donor if c != label)]
        seen.append(len(images))
        return out

    def failure(images, labels):  # returns the clean images: fails everywhere
        seen.append(len(images))
        return images.clone()

    monkeypatch.setattr(autoattack, "parts", lambda r: [("a", breaker), ("b", failure), ("c", failure)])
    records = evaluate_robustness(trained_mlp, x, y, small(attacks=("autoattack",), subset=40, expensive_subset=40, expensive_eps=(0.3,)), seed=0)
    expected = clean_ok.clone()
    expected[broken] = False
    assert by(records, "robust_accuracy", attack="autoattack", eps=0.3) == [float(expected.float().mean())]
    assert seen == [int(clean_ok.sum()), int(expected.sum()), int(expected.sum())]  # later parts see only robust images


def test_cw_ends_where_the_judge_misclassifies(trained_vib, synthetic):
    """Each C&W distance belongs to a point the judge's draw calls wrong: CW's robust accuracy can never exceed the
    clean accuracy, and at the median distance (or beyond) at least half the images are broken."""
    x, y = synthetic.test.images[:40], synthetic.test.labels[:40]
    records = evaluate_robustness(trained_vib, x, y, small(attacks=("cw",), subset=40, expensive_subset=40, cw_steps=20, l2_eps=(0.5, 1.0, 2.0, 4.0)), seed=0)
    for path in ("mean", "eot"):
        median = by(records, "median_adv_distance", attack="cw", path=path)[0]
        rates = dict(zip((0.5, 1.0, 2.0, 4.0), by(records, "robust_accuracy", attack="cw", path=path)))
        assert math.isfinite(median) and by(records, "attack_success_rate", attack="cw", path=path)[0] > 0.5
        assert all(v <= 0.5 + 1e-9 for e, v in rates.items() if e >= median)


class MaskedEOT(nn.Module):
    """A stochastic model whose sampled path passes no gradient to the input (the mean path is intact): EOT attacks
    find nothing, the mean path's do."""

    stochastic = True
    num_classes = 10

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mean_mode = inner, False

    def forward(self, x):
        self.inner.mean_mode = self.mean_mode
        try:
            return self.inner(x) if self.mean_mode else self.inner(x.detach()) + 0.0 * x.flatten(1).sum(1, keepdim=True)
        finally:
            self.inner.mean_mode = False


def test_eot_weaker_than_mean_path_is_flagged(trained_vib, synthetic):
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    records = evaluate_robustness(MaskedEOT(trained_vib), x, y, small(attacks=("pgd",), judge_draws=2), seed=0)
    eot, mean = by(records, "robust_accuracy", attack="pgd", path="eot", eps=0.3)[0], by(records, "robust_accuracy", attack="pgd", path="mean", eps=0.3)[0]
    assert eot > mean + 0.3
    doubted = {(r["attack"], r["path"], r["eps"]) for r in records if r["metric"] == "flag_eot_weaker" and r["attack"] != "checks"}
    assert ("pgd", "eot", 0.3) in doubted and flags_of(records)["eot_weaker"]


@pytest.mark.slow
def test_vib_rows_are_not_far_above_pgd_without_a_flag(trained_vib, synthetic):
    """On a VIB model: C&W (judged by the predictor) and Square (querying the fixed-noise oracle) do not sit tens of
    points above PGD at the same budget, and any attack far weaker on the EOT path than on the mean path is flagged."""
    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    s = small(attacks=("pgd", "pgd_l2", "cw", "square"), linf_eps=(0.2, 0.3), l2_eps=(1.0, 2.0, 3.0), expensive_eps=(0.2, 0.3),
              eot_iter=2, cw_steps=30, square_queries=300, judge_draws=3, oracle_draws=4)  # fmt: skip
    records = evaluate_robustness(trained_vib, x, y, s, seed=0)
    acc = {(r["attack"], r["path"], r["eps"]): r["value"] for r in records if r["metric"] == "robust_accuracy"}
    doubted = {(r["attack"], r["path"], r["eps"]) for r in records if r["metric"].startswith("flag_") and r["attack"] != "checks"}
    for path in ("mean", "eot"):
        for eps in (1.0, 2.0, 3.0):
            assert acc[("cw", path, eps)] <= acc[("pgd_l2", path, eps)] + 0.10
        for eps in (0.2, 0.3):
            assert acc[("square", path, eps)] <= acc[("pgd", path, eps)] + 0.10
    for (attack, path, eps), value in acc.items():
        if path == "eot" and (attack, "mean", eps) in acc and value > acc[(attack, "mean", eps)] + 0.13:
            assert (attack, "eot", eps) in doubted
