"""Adversarial robustness with torchattacks, honestly measured.

Attacks run in [0, 1] pixel space through `AttackTarget`, which fits any registry model to
torchattacks' contract (images in [0, 1] -> one (N, C) tensor of logits). Stochastic models
(VIB) are attacked two ways (Athalye et al. 2018; Korshunova et al. 2021): through the
deterministic mean path (z = mu) and through the stochastic predictor itself with expectation
over transformation (EOT: gradients averaged over `eot_iter` forward passes). Robustness is
always judged on the model's own predictor (the 12-sample average for VIB) under a fixed
noise seed, and an example counts as robust at eps only if it survives every attack run
against it at every budget up to eps (the worst case).

Attacks and the papers they come from:
- fgsm: Goodfellow et al. 2015 (for EOT paths: one EOT-PGD step of size eps, no random start).
- pgd: Madry et al. 2018, L-infinity, random start, step 2.5 eps / steps (EOT-PGD on EOT paths).
- pgd_l2: Madry et al. 2018, L2 (torchattacks has no EOT variant: single-draw gradients on EOT paths).
- cw: Carlini & Wagner 2017, L2 (the VIB paper's attack). It minimizes the perturbation; robust
  accuracy at eps counts an example as broken if CW found an adversarial example with
  ||delta||_2 <= eps. torchattacks' CW takes one constant c and has no binary search over it, so
  we run it at each c of `cw_cs` and keep, per example, the smallest successful perturbation.
  Two fixes make torchattacks' CW work on MNIST models: (1) its margin takes a max over
  outputs times a one-hot mask, which assumes some positive logits; on log-probabilities (our
  stochastic predictor's output, all <= 0) the masked zeros win and the margin is constantly 0,
  so the attack never moves. CW sees the outputs shifted per example by a detached constant
  (`PositiveLogits`), which leaves the margin and its gradient exact. (2) It works in tanh space,
  where pixels at exactly 0 or 1 (most of MNIST) sit at atanh(+-1) = +-inf and can never move;
  CW starts from the images squeezed into [1e-3, 1 - 1e-3] (`CW_SQUEEZE`), and distances are
  measured from the original images, so the squeeze only ever counts against the attack.
- square: Andriushchenko et al. 2020, black-box score-based, L-infinity.
- autoattack: Croce & Hein 2020's standard ensemble, APGD-CE, APGD-T (9 targets), FAB-T
  (9 targets), Square, each run on the points still robust. torchattacks' own AutoAttack passes no
  step count and runs 10 iterations where the original runs 100; we build the ensemble ourselves
  with the steps in `AttackSettings` and label it with exactly what ran (`autoattack_label`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from vibbench.models.classifier import Classifier
from vibbench.core.errors import VibbenchError
from vibbench.core.errors import unknown_name_message

from vibbench.evaluation.settings import ATTACKS, NORMS, PATHS, AttackSettings, AttackSpec, check_eps, check_norm

CW_SQUEEZE = 1e-3


class PositiveLogits(nn.Module):
    """Outputs shifted per example by a detached constant so that all are >= 1; softmax, argmax and
    every margin are unchanged. Needed by torchattacks' CW (see the module docstring)."""

    def __init__(self, target: nn.Module):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.target(x)
        return out - out.detach().amin(dim=1, keepdim=True) + 1.0


class AttackTarget(nn.Module):
    """A registry model seen through one path, as torchattacks expects: forward(x in [0,1]) -> (N, C) logits.

    path "mean" sets z = mu for the duration of each call; "eot" and "direct" use the model's
    own predictor (for a stochastic model every call draws fresh samples).
    """

    def __init__(self, model: Classifier, path: str):
        super().__init__()
        if path not in PATHS:
            raise VibbenchError(unknown_name_message("attack path", path, PATHS))
        self.model = model
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = self.model.mean_mode
        self.model.mean_mode = self.path == "mean"
        try:
            return self.model(x).float()
        finally:
            self.model.mean_mode = saved


def paths_for(model: Classifier) -> tuple[str, ...]:
    return ("mean", "eot") if model.stochastic else ("direct",)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
    """The model's eval-mode predictions under a fixed noise seed (reproducible for stochastic models)."""
    was_training = model.training
    model.eval()
    devices = [images.device] if images.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        preds = torch.cat([model(images[i : i + batch_size]).argmax(-1) for i in range(0, images.shape[0], batch_size)])
    model.train(was_training)
    return preds


def build_attack(
    name: str,
    target: AttackTarget,
    eps: float,
    s: AttackSettings,
    seed: int,
    num_classes: int = 10,
    random_start: bool = True,
    cw_c: float = 1.0,
):
    """The torchattacks object for one attack, budget and path. `random_start` applies to PGD, `cw_c` to CW."""
    eot = target.path == "eot"
    k = s.eot_iter if eot else 1
    if name == "fgsm":
        return torchattacks.EOTPGD(target, eps=eps, alpha=eps, steps=1, eot_iter=k, random_start=False) if eot else torchattacks.FGSM(target, eps=eps)
    if name == "pgd":
        alpha = 2.5 * eps / s.pgd_steps
        if eot:
            return torchattacks.EOTPGD(target, eps=eps, alpha=alpha, steps=s.pgd_steps, eot_iter=k, random_start=random_start)
        return torchattacks.PGD(target, eps=eps, alpha=alpha, steps=s.pgd_steps, random_start=random_start)
    if name == "pgd_l2":
        return torchattacks.PGDL2(target, eps=eps, alpha=2.5 * eps / s.pgd_steps, steps=s.pgd_steps, random_start=random_start)
    if name == "cw":
        return torchattacks.CW(PositiveLogits(target), c=cw_c, kappa=0, steps=s.cw_steps, lr=s.cw_lr)
    if name == "square":
        return torchattacks.Square(target, norm="Linf", eps=eps, n_queries=s.square_queries, n_restarts=1, seed=seed)
    if name == "autoattack":
        common = dict(norm="Linf", eps=eps, seed=seed, n_restarts=1)
        return torchattacks.MultiAttack(
            [
                torchattacks.APGD(target, loss="ce", steps=s.apgd_steps, eot_iter=k, **common),
                torchattacks.APGDT(target, steps=s.apgd_steps, eot_iter=k, n_classes=num_classes, **common),
                torchattacks.FAB(target, steps=s.fab_steps, multi_targeted=True, n_classes=num_classes, **common),
                torchattacks.Square(target, n_queries=s.square_queries, **common),
            ]
        )
    raise VibbenchError(unknown_name_message("attack", name, tuple(ATTACKS)))


def adversarial_examples(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    eps: float,
    path: str,
    s: AttackSettings,
    seed: int = 0,
    random_start: bool = True,
    cw_c: float = 1.0,
) -> torch.Tensor:
    """Run one attack in chunks of `s.batch_size`; returns the adversarial images (same shape)."""
    spec = ATTACKS.get(name)
    if spec is None:
        raise VibbenchError(unknown_name_message("attack", name, tuple(ATTACKS)))
    if images.shape[0] == 0:
        raise VibbenchError("the evaluation subset is empty: nothing to attack (check --attack-subset / max_eval_examples)")
    check_eps(spec.norm, eps)
    target = AttackTarget(model, path)
    attack = build_attack(name, target, eps, s, seed, getattr(model, "num_classes", 10), random_start, cw_c)
    out = []
    devices = [images.device] if images.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        inputs = images * (1 - 2 * CW_SQUEEZE) + CW_SQUEEZE if name == "cw" else images
        for i in range(0, images.shape[0], s.batch_size):
            out.append(attack(inputs[i : i + s.batch_size], labels[i : i + s.batch_size]).detach())
    return torch.cat(out)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def input_gradients(model: Classifier, images: torch.Tensor, labels: torch.Tensor, path: str) -> torch.Tensor:
    """d CE / d x through one path (for the zero-gradient check)."""
    target = AttackTarget(model, path).eval()
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(target(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad
