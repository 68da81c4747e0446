"""Robust accuracy per attack, path and budget; the per-example worst case; gradient-masking checks.

`evaluate_robustness` is pure: a model and test images in, a list of measurement records out. Each record:
attack, path, norm, eps, n (examples), metric, value; and the wall time of each attack and path (evaluation/timing.py).

The judge decides everywhere (judge.py): an image is robust under draw r of the model's noise if the predictor
classifies it correctly under draw r both clean and attacked. A deterministic model has one draw. Per row:
- robust_accuracy: the expected robust accuracy, the mean over images and draws;
- robust_accuracy_all_draws: the share of images robust under every draw;
- judge_disagreement: the share of attacked images the draws do not agree on.
The worst case is conservative: an image is robust at eps only if no attack on any path broke it under any draw at
any budget eps' <= eps (a perturbation within eps' is within eps too). Its per-image outcome is kept as the
largest budget of the grid at which the image is robust (metric worst_case_radius, bin = its test-set index), from
which the report computes paired tests between models on the same images.

PGD (L-inf and L2) stops on an image once the judge has it broken under every draw (settings `early_stop`,
attacks/early_stop.py); without it, PGD's last iterate is judged, as torchattacks returns it.

Minimal-perturbation attacks (C&W) end at a point the judge misclassifies: each perturbation found is scaled up
along its own direction until the judge's draw calls it wrong, and an image's distance under a draw is the smallest
such perturbation (0 for a clean mistake, infinite when none was found).

Gradient-masking checks (masking.py) are flags on the rows they doubt, never a reason to hide a number.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from vibbench.core.errors import VibbenchError
from vibbench.core.precision import attack_precision, autocast
from vibbench.core.progress import log
from vibbench.evaluation.attacks import autoattack
from vibbench.evaluation.attacks.adversarial import adversarial_examples, attack_in_chunks, attack_request, perturbation_norm, search_precision
from vibbench.evaluation.attacks.registry import ATTACKS, AttackSpec
from vibbench.evaluation.attacks.target import input_gradients, paths_for
from vibbench.evaluation.inference import eval_mode, seeded_noise
from vibbench.evaluation.judge import Judge
from vibbench.evaluation.masking import FLAGS, Key, masking_flags
from vibbench.evaluation.settings import AttackSettings
from vibbench.evaluation.timing import timed
from vibbench.models.classifier import Classifier

CW_SCALES = (1.0, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0)
"""How far a C&W perturbation is scaled along its direction to reach a point the judge misclassifies."""


def worst_case(robust: dict[Key, torch.Tensor]) -> dict[tuple[str, float], torch.Tensor]:
    """Per example and norm: robust at eps only if robust against every attack and path, under every draw, at every
    eps' <= eps. Masks are (draws, m) or (m,); masks of different lengths (subsets) are cut to the shortest."""
    by_norm: dict[str, list[Key]] = defaultdict(list)
    for key in robust:
        by_norm[key[2]].append(key)
    out: dict[tuple[str, float], torch.Tensor] = {}
    for norm, keys in by_norm.items():
        n = min(robust[k].shape[-1] for k in keys)
        alive = torch.ones(n, dtype=torch.bool, device=robust[keys[0]].device)
        for eps in sorted({k[3] for k in keys}):
            for k in keys:
                if k[3] == eps:
                    mask = robust[k][..., :n]
                    alive &= mask.all(0) if mask.dim() == 2 else mask
            out[(norm, eps)] = alive.clone()
    return out


@dataclass(frozen=True)
class AttackRun:
    """What every attack of one evaluation shares: the model, the images and labels (positions 0..n-1 of the judge),
    the settings, the noise seed, the judge, and the clean judgement (draws, n)."""

    model: Classifier
    x: torch.Tensor
    y: torch.Tensor
    settings: AttackSettings
    seed: int
    judge: Judge
    clean: torch.Tensor

    def adversarial(self, attack: str, m: int, eps: float, path: str, **options) -> torch.Tensor:
        """Adversarial versions of the first m images (`options`: random_start, cw_c). With the settings'
        `early_stop`, an iterative attack stops on an image once `broken` says so."""
        done = self.broken if self.settings.early_stop else None
        return adversarial_examples(self.model, self.x[:m], self.y[:m], attack, eps, path, self.settings, self.seed, done=done, **options)

    def broken(self, adv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(len(adv),): robust under no draw of the judge, so counted broken whatever an attack does next."""
        return ~self.robust(adv, positions).any(0)

    def robust(self, adv: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(draws, len(adv)): image `positions[k]` (default k) is right under the draw clean and attacked."""
        pos = torch.arange(adv.shape[0]) if positions is None else positions
        return self.clean[:, pos.to(self.clean.device)] & self.judge.correct(adv, pos)


def budgeted_robustness(run: AttackRun, spec: AttackSpec, path: str, m: int) -> dict[Key, torch.Tensor]:
    """Robust examples (draws, m) under an attack with a budget, at each budget of its grid (the expensive grid if it is expensive)."""
    grid = run.settings.expensive_eps if spec.expensive else run.settings.grid(spec.norm)
    return {(spec.name, path, spec.norm, eps): run.robust(run.adversarial(spec.name, m, eps, path)) for eps in grid}


def ensemble_robustness(run: AttackRun, spec: AttackSpec, path: str, m: int, known: dict[Key, torch.Tensor] | None = None) -> dict[Key, torch.Tensor]:
    """The AutoAttack ensemble (attacks/autoattack.py) at each expensive budget: its parts run in order, each on the
    images still robust under some draw; an image's result is the strongest adversarial image found so far (the one
    fewest draws classify correctly). A part that is also an attack of the run (Square) and already ran on these
    images at this budget and path is not run again: its judged result in `known` stands for it on those images
    (the same attack; only its random draws, taken per batch, differ from a run on the remaining images alone)."""
    known = known or {}
    out = {}
    for eps in run.settings.expensive_eps:
        robust = run.clean[:, :m].clone()
        for name, part in autoattack.parts(attack_request(run.model, path, eps, run.settings, run.seed)):
            todo = robust.any(0).nonzero().flatten()
            if todo.numel() == 0:
                break
            ran = known.get((name, path, spec.norm, eps))
            if ran is not None and ran.shape[-1] >= m:
                found = ran[:, todo.to(ran.device)]
            else:
                x, y = run.x[todo.to(run.x.device)], run.y[todo.to(run.y.device)]
                adv = attack_in_chunks(part, x, y, run.settings.batch_size, run.seed, precision=search_precision(name, run.settings.precision))
                found = run.robust(adv, todo.cpu())
            stronger = found.sum(0) < robust[:, todo].sum(0)
            robust[:, todo[stronger]] = found[:, stronger]
        out[(spec.name, path, spec.norm, eps)] = robust
    return out


def minimal_robustness(run: AttackRun, spec: AttackSpec, path: str, m: int) -> tuple[dict[Key, torch.Tensor], torch.Tensor]:
    """Robust examples (draws, m) under a minimal-perturbation attack at each budget of its norm's grid, and the
    distance (draws, m) of the smallest perturbation the judge's draw misclassifies (0: a clean mistake; inf: none
    found). The attack runs at each c of `cw_cs`; each perturbation is scaled by CW_SCALES (see the module docstring)."""
    x = run.x[:m]
    dist = torch.where(run.clean[:, :m], float("inf"), 0.0)
    for c in run.settings.cw_cs:
        delta = run.adversarial(spec.name, m, 0.0, path, cw_c=c) - x
        for scale in CW_SCALES:
            point = (x + scale * delta).clamp(0.0, 1.0)
            size = perturbation_norm(point - x, spec.norm).to(dist.device)
            wrong = ~run.judge.correct(point)
            dist = torch.where(wrong, torch.minimum(dist, size[None]), dist)
    robust = {(spec.name, path, spec.norm, eps): dist > eps + 1e-6 for eps in run.settings.grid(spec.norm)}
    return robust, dist


def large_eps_accuracy(run: AttackRun, path: str, m: int) -> dict[Key, float]:
    """Expected robust accuracy of the first m images under PGD at the very large budgets of `large_eps`."""
    out: dict[Key, float] = {}
    for norm, eps in run.settings.large_eps:
        # no random start: at such budgets a random start is itself noise that destroys the
        # image and would stand in for a failed attack, hiding masked gradients
        attack = "pgd" if norm == "linf" else "pgd_l2"
        adv = run.adversarial(attack, m, eps, path, random_start=False)
        out[(attack, path, norm, eps)] = float(run.robust(adv).float().mean())
    return out


def evaluate_robustness(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AttackSettings,
    *,
    seed: int = 0,
    label: str = "",
    index: torch.Tensor | None = None,
) -> list[dict]:
    """Attack `model` on the first `settings.subset` of `images` (the caller passes the run's evaluation set, in
    its random order, and `index`, the images' indices in the test split, which key the judge's noise; default
    0..n-1); the expensive attacks take the first `expensive_subset`. Returns measurement records."""
    if images.shape[0] == 0 or settings.subset < 1:
        raise VibbenchError("the evaluation subset is empty: nothing to attack")
    n_all = min(settings.subset, images.shape[0])
    n_exp = min(settings.expensive_subset, n_all)
    x, y = images[:n_all], labels[:n_all]
    index = (torch.arange(n_all) if index is None else index[:n_all]).cpu()
    robust: dict[Key, torch.Tensor] = {}
    large: dict[Key, float] = {}
    zero_grad: dict[str, float] = {}
    distances: dict[Key, torch.Tensor] = {}
    seconds: list[dict] = []  # timing records, one per attack and path (evaluation/timing.py)
    with eval_mode(model):
        judge = Judge(model, y, index, draws=settings.judge_draws, seed=seed, batch_size=settings.batch_size)
        run = AttackRun(model, x, y, settings, seed, judge, clean=judge.correct(x))
        for path in paths_for(model):
            with timed(seconds, "robustness", attack="checks", path=path):
                # the EOT path samples: its gradient is reproducible only when seeded; in the gradient attacks' own
                # arithmetic, since the check vouches for the gradients they follow (bf16 rounding can zero a gradient)
                with seeded_noise(seed, x.device), autocast(x.device, attack_precision(x.device, settings.precision)):
                    grads = input_gradients(model, x[:n_exp], y[:n_exp], path)
                zero_grad[path] = float((grads.flatten(1).abs().amax(1) == 0).float().mean())
                large |= large_eps_accuracy(run, path, n_exp)
            for attack in settings.attacks:
                spec = ATTACKS[attack]
                m = n_exp if spec.expensive else n_all
                with timed(seconds, "robustness", attack=attack, path=path, norm=spec.norm):
                    if spec.minimal:
                        found, distances[(attack, path, spec.norm, float("nan"))] = minimal_robustness(run, spec, path, m)
                    elif attack == "autoattack":
                        found = ensemble_robustness(run, spec, path, m, known=robust)
                    else:
                        found = budgeted_robustness(run, spec, path, m)
                robust |= found
                log(f"  {label} {attack} ({path} path): {seconds[-1]['value']:.1f} s")
    return summary_records(robust, large, zero_grad, distances, run.clean, index, n_exp, stochastic=judge.stochastic) + seconds


def summary_records(
    robust: dict[Key, torch.Tensor],
    large: dict[Key, float],
    zero_grad: dict[str, float],
    distances: dict[Key, torch.Tensor],
    clean: torch.Tensor,
    index: torch.Tensor,
    n_exp: int,
    *,
    stochastic: bool = False,
) -> list[dict]:
    """Records of robust accuracy per attack, path and budget (expected over draws, under all draws, the judge's
    disagreement, and on the first n images of each shorter row: robust_accuracy_shared), the minimal attacks' distances, the worst case and its per-image radius, the large-eps
    accuracies, the zero-gradient fractions, the clean accuracy of every image set measured, and the masking flags."""
    robust = {k: v if v.dim() == 2 else v[None] for k, v in robust.items()}
    clean = clean if clean.dim() == 2 else clean[None]
    acc = {k: float(v.float().mean()) for k, v in robust.items()}
    sizes = {k: v.shape[-1] for k, v in robust.items()}
    disagreement = {k: float((v.any(0) & ~v.all(0)).float().mean()) for k, v in robust.items()}
    records = []
    for key, value in acc.items():
        records.append(_record(*key, sizes[key], "robust_accuracy", value))
        records.append(_record(*key, sizes[key], "robust_accuracy_all_draws", float(robust[key].all(0).float().mean())))
        records.append(_record(*key, sizes[key], "judge_disagreement", disagreement[key]))
    for (attack, path, norm, _), dist in distances.items():
        flat = dist.flatten().sort().values
        attempted = clean[:, : dist.shape[-1]].flatten()
        records.append(_record(attack, path, norm, float("nan"), dist.shape[-1], "median_adv_distance", float(flat[(flat.numel() - 1) // 2])))
        success = torch.isfinite(dist.flatten()[attempted]).float().mean() if attempted.any() else torch.tensor(float("nan"))
        records.append(_record(attack, path, norm, float("nan"), dist.shape[-1], "attack_success_rate", float(success)))
    worst = worst_case(robust)
    for (norm, eps), mask in worst.items():
        records.append(_record("worst_case", "all", norm, eps, mask.numel(), "robust_accuracy", float(mask.float().mean())))
    for norm in sorted({k[0] for k in worst}):
        grid = sorted(e for nm, e in worst if nm == norm)
        radius = torch.zeros(worst[(norm, grid[0])].numel())
        for eps in grid:
            radius = torch.where(worst[(norm, eps)].cpu(), torch.tensor(eps), radius)
        for pos, r in enumerate(radius.tolist()):
            records.append(_record("worst_case", "all", norm, float("nan"), radius.numel(), "worst_case_radius", r) | {"bin": int(index[pos])})
    for (attack, path, norm, eps), value in large.items():
        records.append(_record(attack, path, norm, eps, n_exp, "large_eps_accuracy", value))
    for path, frac in zero_grad.items():
        records.append(_record("gradient", path, "", float("nan"), n_exp, "zero_grad_fraction", frac))
    n_all = clean.shape[-1]
    for m in sorted({n_all} | set(sizes.values()), reverse=True):  # the clean accuracy of every image set measured
        records.append(_record("clean", "all", "", 0.0, m, "robust_accuracy", float(clean[:, :m].float().mean())))
        records.append(_record("clean", "all", "", 0.0, m, "robust_accuracy_all_draws", float(clean[:, :m].all(0).float().mean())))
    lengths = set(sizes.values())  # each row's accuracy on the first m images of every shorter row: compared on shared images
    prefix = {k: {m: float(v[:, :m].float().mean()) for m in lengths if m < sizes[k]} for k, v in robust.items()}
    flags = masking_flags(
        acc, sizes, large, zero_grad, disagreement, white_box={a: s.white_box for a, s in ATTACKS.items()}, stochastic=stochastic,
        large_n=n_exp, prefix=prefix,
    )
    for key, shorter in prefix.items():  # what the checks held against the shorter rows, so a reader can check them
        records += [_record(*key, m, "robust_accuracy_shared", value) for m, value in sorted(shorter.items())]
    for flag in FLAGS:
        records.append(_record("checks", "all", "", float("nan"), n_all, f"flag_{flag}", float(bool(flags[flag]))))
        records += [_record(*key, sizes[key], f"flag_{flag}", 1.0) for key in flags[flag]]
    return records


def _record(attack: str, path: str, norm: str, eps: float, n: int, metric: str, value: float) -> dict:
    return {"attack": attack, "path": path, "norm": norm, "eps": eps, "n": n, "metric": metric, "value": value}
