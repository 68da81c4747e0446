"""Robust accuracy per attack, path and budget; the per-example worst case; gradient-masking checks.

`evaluate_robustness` is pure: a model and test images in, a list of measurement records out.
Each record: attack, path, norm, eps, n (examples), metric, value. Robust accuracy is the
fraction of the first n test images the model's own predictor classifies correctly on the
adversarial example (a clean mistake is never robust).

Gradient-masking checks (after Athalye et al. 2018 and Croce & Hein 2020), reported as flags,
never used to hide a number:
- nonmonotone: some attack's robust accuracy rises with eps by more than sampling slack;
- large_eps: at a very large budget PGD (without random start) leaves accuracy clearly above chance;
- blackbox_stronger: the black-box Square attack beats every white-box L-inf attack by > 5 points;
- zero_grad: more than 1% of examples have an exactly zero input gradient.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from vibbench.evaluation.settings import ATTACKS, AttackSettings
from vibbench.evaluation.attacks import (
    adversarial_examples,
    input_gradients,
    paths_for,
    perturbation_norm,
    predict,
)
from vibbench.models.classifier import Classifier
from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log

EXPENSIVE = ("cw", "square", "autoattack")
FLAGS = ("nonmonotone", "large_eps", "blackbox_stronger", "zero_grad")
BLACKBOX_MARGIN = 0.05
LARGE_EPS_MARGIN = 0.10
ZERO_GRAD_FRACTION = 0.01

Key = tuple[str, str, str, float]  # attack, path, norm, eps


def worst_case(robust: dict[Key, torch.Tensor]) -> dict[tuple[str, float], torch.Tensor]:
    """Per example and norm: robust at eps only if robust against every attack and path at every eps' <= eps.

    A perturbation within eps' is also within eps >= eps', so a point broken at a smaller budget
    is broken at every larger one. Masks of different lengths (subsets) are cut to the shortest.
    """
    by_norm: dict[str, list[Key]] = defaultdict(list)
    for key in robust:
        by_norm[key[2]].append(key)
    out: dict[tuple[str, float], torch.Tensor] = {}
    for norm, keys in by_norm.items():
        n = min(robust[k].numel() for k in keys)
        alive = torch.ones(n, dtype=torch.bool, device=robust[keys[0]].device)
        for eps in sorted({k[3] for k in keys}):
            for k in keys:
                if k[3] == eps:
                    alive &= robust[k][:n]
            out[(norm, eps)] = alive.clone()
    return out


def masking_flags(acc: dict[Key, float], n: dict[Key, int], large: dict[Key, float], zero_grad: dict[str, float], num_classes: int) -> dict[str, bool]:
    """The four gradient-masking checks from robust accuracies (see the module docstring)."""
    flags = dict.fromkeys(FLAGS, False)
    curves: dict[tuple[str, str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for (attack, path, norm, eps), value in acc.items():
        curves[(attack, path, norm)].append((eps, value, n[(attack, path, norm, eps)]))
    for points in curves.values():
        points.sort()
        for (_, a, m), (_, b, _) in zip(points, points[1:]):
            if b > a + max(0.005, 3.0 / m):  # three examples of slack for sampling noise
                flags["nonmonotone"] = True
    chance = 1.0 / num_classes
    flags["large_eps"] = any(v > chance + LARGE_EPS_MARGIN for v in large.values())
    for (attack, path, norm, eps), value in acc.items():
        if attack != "square":
            continue
        white = [v for (a, p, nm, e), v in acc.items() if p == path and nm == norm and e == eps and ATTACKS[a].white_box and a != "autoattack"]
        if white and value < min(white) - BLACKBOX_MARGIN:
            flags["blackbox_stronger"] = True
    flags["zero_grad"] = any(f > ZERO_GRAD_FRACTION for f in zero_grad.values())
    return flags


def evaluate_robustness(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, settings: AttackSettings, *, seed: int = 0, label: str = ""
) -> list[dict]:
    """Attack `model` on the first `settings.subset` images; return measurement records."""
    if images.shape[0] == 0 or settings.subset < 1:
        raise VibbenchError("the evaluation subset is empty: nothing to attack")
    model.eval()
    n_all = min(settings.subset, images.shape[0])
    n_exp = min(settings.expensive_subset, n_all)
    x, y = images[:n_all], labels[:n_all]
    correct = predict(model, x, seed=seed) == y
    robust: dict[Key, torch.Tensor] = {}
    large: dict[Key, float] = {}
    zero_grad: dict[str, float] = {}
    records: list[dict] = []

    def judge(adv: torch.Tensor, m: int) -> torch.Tensor:
        return correct[:m] & (predict(model, adv, seed=seed) == y[:m])

    for path in paths_for(model):
        grads = input_gradients(model, x[:n_exp], y[:n_exp], path)
        zero_grad[path] = float((grads.flatten(1).abs().amax(1) == 0).float().mean())
        for attack in settings.attacks:
            spec = ATTACKS[attack]
            m = n_exp if attack in EXPENSIVE else n_all
            t0 = time.perf_counter()
            if spec.minimal:
                dist = torch.full((m,), float("inf"), device=x.device)
                for c in settings.cw_cs:
                    adv = adversarial_examples(model, x[:m], y[:m], attack, 0.0, path, settings, seed, cw_c=c)
                    fooled = ~judge(adv, m) & correct[:m]
                    dist = torch.where(fooled, torch.minimum(dist, perturbation_norm(adv - x[:m], spec.norm)), dist)
                for eps in settings.grid(spec.norm):
                    robust[(attack, path, spec.norm, eps)] = correct[:m] & ~(dist <= eps + 1e-6)
                found = dist[torch.isfinite(dist)]
                records.append(_record(attack, path, spec.norm, float("nan"), m, "median_adv_distance", float(found.median()) if found.numel() else float("nan")))
            else:
                grid = settings.expensive_eps if attack in EXPENSIVE else settings.grid(spec.norm)
                for eps in grid:
                    adv = adversarial_examples(model, x[:m], y[:m], attack, eps, path, settings, seed)
                    robust[(attack, path, spec.norm, eps)] = judge(adv, m)
            log(f"  {label} {attack} ({path} path): {time.perf_counter() - t0:.1f} s")
        for norm, eps in settings.large_eps:
            # no random start: at such budgets a random start is itself noise that destroys the
            # image and would stand in for a failed attack, hiding masked gradients
            attack = "pgd" if norm == "linf" else "pgd_l2"
            adv = adversarial_examples(model, x[:n_exp], y[:n_exp], attack, eps, path, settings, seed, random_start=False)
            large[(attack, path, norm, eps)] = float(judge(adv, n_exp).float().mean())

    acc = {k: float(v.float().mean()) for k, v in robust.items()}
    sizes = {k: v.numel() for k, v in robust.items()}
    for (attack, path, norm, eps), value in acc.items():
        records.append(_record(attack, path, norm, eps, sizes[(attack, path, norm, eps)], "robust_accuracy", value))
    for (norm, eps), mask in worst_case(robust).items():
        records.append(_record("worst_case", "all", norm, eps, mask.numel(), "robust_accuracy", float(mask.float().mean())))
    for (attack, path, norm, eps), value in large.items():
        records.append(_record(attack, path, norm, eps, n_exp, "large_eps_accuracy", value))
    for path, frac in zero_grad.items():
        records.append(_record("gradient", path, "", float("nan"), n_exp, "zero_grad_fraction", frac))
    records.append(_record("clean", "all", "", 0.0, n_all, "robust_accuracy", float(correct.float().mean())))
    flags = masking_flags(acc, sizes, large, zero_grad, model.num_classes)
    for flag, on in flags.items():
        records.append(_record("checks", "all", "", float("nan"), n_all, f"flag_{flag}", float(on)))
    return records


def _record(attack: str, path: str, norm: str, eps: float, n: int, metric: str, value: float) -> dict:
    return {"attack": attack, "path": path, "norm": norm, "eps": eps, "n": n, "metric": metric, "value": value}
