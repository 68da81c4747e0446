"""Running one attack: adversarial examples in chunks under a fixed noise seed, and the size of a perturbation."""

from __future__ import annotations

import torch

from vibbench.core.precision import attack_precision, autocast
from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.evaluation.attacks import autoattack
from vibbench.evaluation.attacks.early_stop import Done
from vibbench.evaluation.attacks.registry import ATTACKS
from vibbench.evaluation.attacks.target import AttackRequest, AttackTarget
from vibbench.evaluation.inference import seeded_noise
from vibbench.evaluation.settings import AttackSettings, check_eps
from vibbench.models.classifier import Classifier


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
    done: Done | None = None,
) -> torch.Tensor:
    """Run one attack in chunks of `s.batch_size`; returns the adversarial images (same shape).
    `random_start` applies to PGD, `cw_c` to CW; `done` (positions in `images`) stops an iterative attack
    on an image once it is broken (attacks/early_stop.py), ignored by the others."""
    spec = ATTACKS.get(name)
    if spec is None:
        raise VibbenchError(unknown_name_message("attack", name, tuple(ATTACKS)))
    if images.shape[0] == 0:
        raise VibbenchError("the evaluation subset is empty: nothing to attack (check --attack-subset / max_eval_examples)")
    check_eps(spec.norm, eps)
    request = attack_request(model, path, eps, s, seed, random_start=random_start, cw_c=cw_c)
    if name == "autoattack":  # each part in its own arithmetic, as the harness runs them: Square in fp32
        attack = autoattack.build(request, part_precision=lambda part: search_precision(part, s.precision))
    else:
        attack = spec.build(request)
    return attack_in_chunks(attack, images, labels, s.batch_size, seed, done=done, precision=search_precision(name, s.precision))


def search_precision(name: str, precision: str) -> str:
    """The arithmetic attack `name` (a registry attack or an AutoAttack part) computes in under the setting
    `precision`: a score-based search (`white_box` False: Square) compares the losses of nearby points, so it computes
    in fp32 whatever the setting; bf16 rounding turns its comparisons into noise. On a VIB model of the quick profile
    Square at L-inf 0.1 left 43% of 200 images robust (over 5 judge draws) in bf16 against 33% in fp32 (the EOT path: 38% against
    31%), where every gradient attack agreed with its fp32 run within 0.4 points."""
    spec = ATTACKS.get(name)
    return "fp32" if spec is not None and not spec.white_box else precision


def attack_request(model: Classifier, path: str, eps: float, s: AttackSettings, seed: int = 0, **options) -> AttackRequest:
    """What an attack builder is given: the model seen through `path`, the budget, the settings; `options`: random_start, cw_c."""
    return AttackRequest(AttackTarget(model, path), eps, s, seed, getattr(model, "num_classes", 10), **options)


def attack_in_chunks(
    attack, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, done: Done | None = None, precision: str = "fp32"
) -> torch.Tensor:
    """`attack(images, labels)` in chunks of `batch_size` under the noise seed `seed`; the adversarial images, detached.
    An attack that stops early (a `done` attribute) is given `done` for each chunk, in positions of `images`.

    `precision` (an attack precision setting, resolved for the images' device by `attack_precision`) is the
    arithmetic of the attacker's forward and backward passes: with bf16 they run under bf16 autocast (bf16 matrix
    products, the model's fp32 weights cast once for the whole attack). What the attack returns is only a candidate:
    the judge (judge.py), which always computes in fp32, decides whether an image is robust, also inside `done`."""
    stops = done is not None and hasattr(attack, "done")
    out = []
    with seeded_noise(seed, images.device), autocast(images.device, attack_precision(images.device, precision)):
        for i in range(0, images.shape[0], batch_size):
            if stops:
                attack.done = lambda adv, rows, start=i: done(adv, rows.cpu() + start)
            out.append(attack(images[i : i + batch_size], labels[i : i + batch_size]).detach())
    if stops:
        attack.done = None
    return torch.cat(out)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per example: the L-infinity or L2 norm of `delta` (N, ...)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
