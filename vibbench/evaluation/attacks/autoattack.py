"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020) as an ensemble of torchattacks' attacks that vibbench runs itself.

The ensemble is a list of parts; the harness (robustness.py) runs them in order, each on the images the
model's judge still classifies correctly under some draw, and keeps per image the strongest adversarial image
found (the one the fewest judge draws classify correctly). torchattacks' own MultiAttack decides from one
forward pass of the attacked function instead, gives later attacks no second chance and returns the clean
image for failures; it is not used.

Which version runs depends on the path:
- direct and mean paths (a deterministic function): the standard version, APGD-CE, APGD-T (9 target
  classes), FAB-T (9 target classes) and Square (black box);
- EOT path (the stochastic predictor): the version for randomized defenses ("rand"), APGD-CE and APGD-DLR,
  each with expectation over transformation (`eot_iter` forward passes per gradient), as in Croce & Hein's
  reference code (version="rand": 20 EOT iterations there).

torchattacks' own AutoAttack passes no step count and runs 10 iterations where the original runs 100; here the
steps come from the attack settings, and the label (`autoattack_label` in settings.py) says what ran.

The standard version's Square part is the run's own Square attack (attacks/square.py: on a stochastic model's
mean path it stops an image only beyond a margin, which makes it stronger there); when the run's Square row has
already attacked the same images at the same budget, the harness takes its result instead of running it again.
"""

from __future__ import annotations

from collections.abc import Callable

from vibbench.evaluation.attacks import square
from vibbench.evaluation.attacks.target import AttackRequest

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
RAND = ("apgd-ce", "apgd-dlr")
"""The parts of each version, in the order they run."""


def version(path: str) -> tuple[str, ...]:
    return RAND if path == "eot" else STANDARD


def parts(r: AttackRequest) -> list[tuple[str, Callable]]:
    """(name, attack) for each part of the version that fits the request's path, in the order they run."""
    import torchattacks

    s, target = r.settings, r.target
    common = dict(norm="Linf", eps=r.eps, seed=r.seed, n_restarts=1)
    build = {
        "apgd-ce": lambda: torchattacks.APGD(target, loss="ce", steps=s.apgd_steps, eot_iter=r.eot_iter, **common),
        "apgd-dlr": lambda: torchattacks.APGD(target, loss="dlr", steps=s.apgd_steps, eot_iter=r.eot_iter, **common),
        "apgd-t": lambda: torchattacks.APGDT(target, steps=s.apgd_steps, eot_iter=r.eot_iter, n_classes=r.num_classes, **common),
        "fab-t": lambda: torchattacks.FAB(target, steps=s.fab_steps, multi_targeted=True, n_classes=r.num_classes, **common),
        "square": lambda: square.build(r),  # the run's Square attack (one restart), so its row's result can stand in
    }
    return [(name, build[name]()) for name in version(target.path)]


def build(r: AttackRequest, part_precision: Callable[[str], str] | None = None):
    """The ensemble as one attack for a caller without a judge: each part runs on the images the attacked function
    still classifies correctly, and an image found adversarial by a part is kept. The harness does not use this:
    it runs `parts` with the model's judge deciding. `part_precision`: each part's attack precision setting by its
    name (adversarial_examples passes its rule: Square in fp32); without it the parts run in the caller's arithmetic."""
    import contextlib

    import torch

    from vibbench.core.precision import attack_precision, autocast

    steps = parts(r)

    def attack(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = images.clone()
        for name, part in steps:
            with torch.no_grad(), autocast(images.device, "fp32"):  # which images are left: decided in fp32
                todo = (r.target(adv).argmax(-1) == labels).nonzero().flatten()
            if todo.numel() == 0:
                break
            own = part_precision is not None  # else the part runs in whatever arithmetic the caller set
            with autocast(images.device, attack_precision(images.device, part_precision(name))) if own else contextlib.nullcontext():
                adv[todo] = part(images[todo], labels[todo]).detach()
        return adv

    return attack
