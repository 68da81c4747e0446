"""A registry model seen through one attack path, as torchattacks expects it; what an attack builder is given."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.evaluation.inference import eval_mode, mean_mode
from vibbench.models.classifier import Classifier
from vibbench.models.head import log_mean_softmax

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

    def draws(self, x: torch.Tensor, k: int, eps: torch.Tensor | None = None) -> torch.Tensor:
        """(k, N, C): k independent forward passes, as k calls of `forward` would give (an EOT step's k draws).

        On a stochastic model's EOT path the encoder is deterministic given x and only z is random, so the k
        draws of its S-sample predictor share one encoder pass: k x S samples of z in the head, each group of S
        averaged as the predictor does. The same quantity as k calls, at the cost of one encoder pass. `eps`
        (k x S, N, K) fixes that noise (draw j takes rows j*S to (j+1)*S); (k x S, 1, K) shares it among the N
        images. Without `eps` the draws are taken from torch's generator and shared among the images
        (`Classifier.shared_noise_logits`: one product instead of forming k x S x N samples of z, and k x S x K
        normal draws instead of N times as many, which were a third of the EOT gradient's time). Each image's
        draws are still fresh at every call and independent of the judge's; only their correlation across the
        images of a batch changes, and every image is attacked on its own loss, so each image's gradient is the
        same estimate as with draws of its own.
        """
        model = self.model
        if self.path == "eot" and getattr(model, "stochastic", False) and hasattr(model, "forward_details") and hasattr(model, "eval_samples"):
            s = model.num_samples
            shared = hasattr(model, "shared_noise_logits") and (eps is None or eps.shape[1] == 1)
            with mean_mode(model, False):
                if shared:
                    if eps is None:
                        eps = torch.randn(k * s, 1, model.latent_dim, device=x.device)
                    logits = model.shared_noise_logits(x, eps).float()  # (k * s, N, C)
                else:
                    logits = model.forward_details(x, num_samples=k * s, eps=eps).logits.float()
            return log_mean_softmax(logits.reshape(k, s, *logits.shape[1:]), dim=1)
        if eps is not None:
            raise VibbenchError("fixed noise for the draws needs a stochastic model's EOT path with forward_details")
        return torch.stack([self(x) for _ in range(k)])

    def loss_gradient(self, x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        """d/dx of the cross-entropy summed over `k` draws (`draws`; k = 1: one forward pass), a PGD step's direction."""
        x = x.clone().requires_grad_(True)
        out = self.draws(x, k) if k > 1 else self(x)[None]  # (draws, N, C)
        loss = F.cross_entropy(out.flatten(0, 1), labels.repeat(out.shape[0]), reduction="sum")
        return torch.autograd.grad(loss, x)[0]


def paths_for(model: Classifier) -> tuple[str, ...]:
    """The paths a model is attacked on; a stochastic module of your own without a mean path (`has_mean_path` False,
    models/external.py) on the EOT path only."""
    if not model.stochastic:
        return ("direct",)
    return ("mean", "eot") if getattr(model, "has_mean_path", True) else ("eot",)


def input_gradients(model: Classifier, images: torch.Tensor, labels: torch.Tensor, path: str) -> torch.Tensor:
    """d CE / d x through one path, in eval mode (for the zero-gradient check)."""
    with eval_mode(model):
        return AttackTarget(model, path).loss_gradient(images, labels, 1)


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
