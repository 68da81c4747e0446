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
from dataclasses import dataclass

import torch

from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log
from vibbench.evaluation.attacks.adversarial import adversarial_examples, perturbation_norm
from vibbench.evaluation.attacks.registry import ATTACKS, AttackSpec
from vibbench.evaluation.attacks.target import input_gradients, paths_for
from vibbench.evaluation.inference import eval_mode, predict, seeded_noise
from vibbench.evaluation.settings import AttackSettings
from vibbench.models.classifier import Classifier

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


@dataclass(frozen=True)
class AttackRun:
    """What every attack of one evaluation shares: the model, the first n test images and their labels,
    the settings, the noise seed, and which images the model classifies correctly unattacked."""

    model: Classifier
    x: torch.Tensor
    y: torch.Tensor
    settings: AttackSettings
    seed: int
    correct: torch.Tensor

    def adversarial(self, attack: str, m: int, eps: float, path: str, **options) -> torch.Tensor:
        """Adversarial versions of the first m images (`options`: random_start, cw_c)."""
        return adversarial_examples(self.model, self.x[:m], self.y[:m], attack, eps, path, self.settings, self.seed, **options)

    def survives(self, adv: torch.Tensor) -> torch.Tensor:
        """Per example of the first len(adv): robust, i.e. correct on the clean image and on `adv`."""
        m = adv.shape[0]
        return self.correct[:m] & (predict(self.model, adv, seed=self.seed) == self.y[:m])


def budgeted_robustness(run: AttackRun, spec: AttackSpec, path: str, m: int) -> dict[Key, torch.Tensor]:
    """Robust examples under an attack with a budget, at each budget of its grid (the expensive grid if it is expensive)."""
    grid = run.settings.expensive_eps if spec.expensive else run.settings.grid(spec.norm)
    return {(spec.name, path, spec.norm, eps): run.survives(run.adversarial(spec.name, m, eps, path)) for eps in grid}


def minimal_robustness(run: AttackRun, spec: AttackSpec, path: str, m: int) -> tuple[dict[Key, torch.Tensor], float]:
    """Robust examples under a minimal-perturbation attack at each budget of its norm's grid, and the median
    distance of the adversarial examples it found. It is run at each c of `cw_cs`; per example the smallest
    successful perturbation counts."""
    dist = torch.full((m,), float("inf"), device=run.x.device)
    for c in run.settings.cw_cs:
        adv = run.adversarial(spec.name, m, 0.0, path, cw_c=c)
        fooled = ~run.survives(adv) & run.correct[:m]
        dist = torch.where(fooled, torch.minimum(dist, perturbation_norm(adv - run.x[:m], spec.norm)), dist)
    robust = {(spec.name, path, spec.norm, eps): run.correct[:m] & ~(dist <= eps + 1e-6) for eps in run.settings.grid(spec.norm)}
    found = dist[torch.isfinite(dist)]
    return robust, float(found.median()) if found.numel() else float("nan")


def large_eps_accuracy(run: AttackRun, path: str, m: int) -> dict[Key, float]:
    """Robust accuracy of the first m images under PGD at the very large budgets of `large_eps` (the large_eps check)."""
    out: dict[Key, float] = {}
    for norm, eps in run.settings.large_eps:
        # no random start: at such budgets a random start is itself noise that destroys the
        # image and would stand in for a failed attack, hiding masked gradients
        attack = "pgd" if norm == "linf" else "pgd_l2"
        adv = run.adversarial(attack, m, eps, path, random_start=False)
        out[(attack, path, norm, eps)] = float(run.survives(adv).float().mean())
    return out


def evaluate_robustness(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, settings: AttackSettings, *, seed: int = 0, label: str = ""
) -> list[dict]:
    """Attack `model` on the first `settings.subset` of `images` (the caller passes the run's evaluation set, in
    its random order; the expensive attacks take its first `expensive_subset`); return measurement records."""
    if images.shape[0] == 0 or settings.subset < 1:
        raise VibbenchError("the evaluation subset is empty: nothing to attack")
    n_all = min(settings.subset, images.shape[0])
    n_exp = min(settings.expensive_subset, n_all)
    x, y = images[:n_all], labels[:n_all]
    robust: dict[Key, torch.Tensor] = {}
    large: dict[Key, float] = {}
    zero_grad: dict[str, float] = {}
    distances: list[dict] = []
    with eval_mode(model):
        run = AttackRun(model, x, y, settings, seed, correct=predict(model, x, seed=seed) == y)
        for path in paths_for(model):
            with seeded_noise(seed, x.device):  # the EOT path samples: its gradient is reproducible only when seeded
                grads = input_gradients(model, x[:n_exp], y[:n_exp], path)
            zero_grad[path] = float((grads.flatten(1).abs().amax(1) == 0).float().mean())
            for attack in settings.attacks:
                spec = ATTACKS[attack]
                m = n_exp if spec.expensive else n_all
                t0 = time.perf_counter()
                if spec.minimal:
                    found, median = minimal_robustness(run, spec, path, m)
                    robust |= found
                    distances.append(_record(attack, path, spec.norm, float("nan"), m, "median_adv_distance", median))
                else:
                    robust |= budgeted_robustness(run, spec, path, m)
                log(f"  {label} {attack} ({path} path): {time.perf_counter() - t0:.1f} s")
            large |= large_eps_accuracy(run, path, n_exp)
    return distances + summary_records(robust, large, zero_grad, run.correct, n_exp, model.num_classes)


def summary_records(
    robust: dict[Key, torch.Tensor], large: dict[Key, float], zero_grad: dict[str, float], correct: torch.Tensor, n_exp: int, num_classes: int
) -> list[dict]:
    """Records of robust accuracy per attack, path and budget, the worst case, the large-eps accuracies, the
    zero-gradient fractions, the clean accuracy and the gradient-masking flags, in that order."""
    n_all = correct.numel()
    acc = {k: float(v.float().mean()) for k, v in robust.items()}
    sizes = {k: v.numel() for k, v in robust.items()}
    records = [_record(*key, sizes[key], "robust_accuracy", value) for key, value in acc.items()]
    for (norm, eps), mask in worst_case(robust).items():
        records.append(_record("worst_case", "all", norm, eps, mask.numel(), "robust_accuracy", float(mask.float().mean())))
    for (attack, path, norm, eps), value in large.items():
        records.append(_record(attack, path, norm, eps, n_exp, "large_eps_accuracy", value))
    for path, frac in zero_grad.items():
        records.append(_record("gradient", path, "", float("nan"), n_exp, "zero_grad_fraction", frac))
    for m in sorted({n_all} | set(sizes.values()), reverse=True):  # the clean accuracy of every image set measured
        records.append(_record("clean", "all", "", 0.0, m, "robust_accuracy", float(correct[:m].float().mean())))
    flags = masking_flags(acc, sizes, large, zero_grad, num_classes)
    for flag, on in flags.items():
        records.append(_record("checks", "all", "", float("nan"), n_all, f"flag_{flag}", float(on)))
    return records


def _record(attack: str, path: str, norm: str, eps: float, n: int, metric: str, value: float) -> dict:
    return {"attack": attack, "path": path, "norm": norm, "eps": eps, "n": n, "metric": metric, "value": value}
