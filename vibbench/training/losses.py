"""The training loss of every method, in one function.

loss = CE(smoothed target) - confidence_penalty * H(p(y|z)) + beta * KL(q(z|x) || N(0, I)),
averaged over the batch and over the training samples of z. Units: nats.
With all weights zero it is plain cross-entropy (the deterministic baseline).
References: label smoothing, Szegedy et al. 2016; confidence penalty, Pereyra et al. 2017;
VIB, Alemi et al. 2017 (KL summed over latent dimensions, averaged over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vibbench.models.classifier import ForwardDetails


@dataclass
class LossTerms:
    loss: torch.Tensor  # scalar, what is minimized
    ce: torch.Tensor  # scalar, cross-entropy with the true label (unsmoothed), nats
    kl: torch.Tensor  # scalar, mean KL over the batch, nats


def training_loss(
    out: ForwardDetails,
    y: torch.Tensor,
    *,
    beta: float | torch.Tensor = 0.0,
    label_smoothing: float | torch.Tensor = 0.0,
    confidence_penalty: float | torch.Tensor = 0.0,
) -> LossTerms:
    """The loss of one batch. Hyperparameters may be floats or 0-d tensors (one per population member)."""
    logp = F.log_softmax(out.logits.float(), dim=-1)  # (n, B, C)
    nll = -logp.gather(-1, y.expand(logp.shape[0], -1).unsqueeze(-1)).squeeze(-1)  # (n, B)
    ce = nll.mean()
    smooth = -logp.mean(dim=-1).mean()  # cross-entropy with the uniform distribution
    entropy = -(logp.exp() * logp).sum(dim=-1).mean()
    kl = out.kl.float().mean()
    loss = (1.0 - label_smoothing) * ce + label_smoothing * smooth - confidence_penalty * entropy + beta * kl
    return LossTerms(loss, ce.detach(), kl.detach())
