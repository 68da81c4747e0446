"""Every attack vibbench runs, by name: what it is (norm, white box, minimal), what it costs, how it is
shown and how it is built. The settings' default attack list and the harness's choices derive from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vibbench.evaluation.attacks import autoattack, cw, fgsm, pgd, pgd_l2, square
from vibbench.evaluation.attacks.target import AttackRequest

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(images in [0, 1], labels) -> adversarial images of the same shape: a torchattacks attack, or CW's wrapper."""


@dataclass(frozen=True)
class AttackSpec:
    name: str
    display_name: str  # in the report's tables and figures
    norm: str  # "linf" or "l2": the norm of its budget, or of the perturbation it minimizes
    white_box: bool  # uses gradients; a black-box attack only queries the outputs
    expensive: bool  # runs on the first `expensive_subset` images; a budgeted one at `expensive_eps` only
    build: Callable[[AttackRequest], Attack]
    minimal: bool = False  # finds a minimal perturbation; budgets are applied afterwards


ATTACKS: dict[str, AttackSpec] = {
    a.name: a
    for a in (
        AttackSpec("fgsm", "FGSM", "linf", white_box=True, expensive=False, build=fgsm.build),
        AttackSpec("pgd", "PGD", "linf", white_box=True, expensive=False, build=pgd.build),
        AttackSpec("pgd_l2", "PGD-L2", "l2", white_box=True, expensive=False, build=pgd_l2.build),
        AttackSpec("cw", "C&W (L2)", "l2", white_box=True, expensive=True, build=cw.build, minimal=True),
        AttackSpec("square", "Square (black box)", "linf", white_box=False, expensive=True, build=square.build),
        AttackSpec("autoattack", "AutoAttack", "linf", white_box=True, expensive=True, build=autoattack.build),
    )
}
"""In the order the harness runs them and the report shows them."""
