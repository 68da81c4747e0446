"""PGD, projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018), L-infinity: random start, step 2.5 eps / steps. On the EOT path: EOT-PGD.

torchattacks' PGD (direct and mean paths) and EOTPGD (EOT path), with the same start, step, projection and, on
the EOT path, sum of the eot_iter draws' cross-entropy gradients, two things added:

- the draws are taken by `AttackTarget.draws`: one encoder pass for all of them on a stochastic model, not
  eot_iter passes;
- with `done` set (the harness sets it from the judge, attacks/early_stop.py) an image stops once it is broken.

Without `done` the iterates equal torchattacks' (tests/evaluation/test_attacks.py checks both).
"""

from __future__ import annotations

import torch

from vibbench.evaluation.attacks.early_stop import iterate
from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    class EarlyStopPGD(torchattacks.EOTPGD):
        done = None  # attacks/early_stop.py

        def forward(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            adv = images.clone().detach()
            if self.random_start:
                adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), min=0, max=1).detach()

            def step(a, rows):
                grad = self.model.loss_gradient(a, labels[rows], self.eot_iter)
                a = a + self.alpha * grad.sign()
                delta = torch.clamp(a - images[rows], min=-self.eps, max=self.eps)
                return torch.clamp(images[rows] + delta, min=0, max=1).detach()

            return iterate(adv, self.steps, step, self.done)

    s = r.settings
    return EarlyStopPGD(r.target, eps=r.eps, alpha=2.5 * r.eps / s.pgd_steps, steps=s.pgd_steps, eot_iter=r.eot_iter, random_start=r.random_start)
