"""A registry model seen through one attack path, as torchattacks expects it; what an attack builder is given."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.evaluation.inference import eval_mode, mean_mode
from vibbench.models.classifier import Classifier

PATHS = ("direct", "mean", "eot")
"""direct: a deterministic model as it is; mean: a stochastic model's z = mu path; eot: its stochastic predictor with EOT."""


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
        with mean_mode(self.model, self.path == "mean"):
            return self.model(x).float()


def paths_for(model: Classifier) -> tuple[str, ...]:
    return ("mean", "eot") if model.stochastic else ("direct",)


def input_gradients(model: Classifier, images: torch.Tensor, labels: torch.Tensor, path: str) -> torch.Tensor:
    """d CE / d x through one path, in eval mode (for the zero-gradient check)."""
    target = AttackTarget(model, path)
    x = images.clone().requires_grad_(True)
    with eval_mode(model):
        loss = F.cross_entropy(target(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@dataclass(frozen=True)
class AttackRequest:
    """One attack to build: the target, the budget eps, the attack settings (an `AttackSettings`) and per-run options."""

    target: AttackTarget
    eps: float
    settings: object  # an AttackSettings; the settings import the attack registry, which imports this module
    seed: int = 0
    num_classes: int = 10
    random_start: bool = True  # PGD's random start
    cw_c: float = 1.0  # the constant of Carlini & Wagner's objective

    @property
    def eot_iter(self) -> int:
        """Forward passes averaged per gradient: the settings' `eot_iter` on the EOT path, else 1."""
        return self.settings.eot_iter if self.target.path == "eot" else 1
