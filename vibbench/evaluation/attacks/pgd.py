"""PGD, projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018), L-infinity: random start, step 2.5 eps / steps. On the EOT path: EOT-PGD.

The direct and mean paths run torchattacks' PGD as it is. On the EOT path this is torchattacks' EOTPGD (the same
start, step, projection and sum of the eot_iter draws' cross-entropy gradients) with the draws taken by
`AttackTarget.draws`: one encoder pass for all of them on a stochastic model, not eot_iter passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    class SharedEncoderEOTPGD(torchattacks.EOTPGD):
        def forward(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            adv = images.clone().detach()
            if self.random_start:
                adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), min=0, max=1).detach()
            for _ in range(self.steps):
                adv.requires_grad_(True)
                out = self.model.draws(adv, self.eot_iter)  # (eot_iter, N, C)
                loss = F.cross_entropy(out.flatten(0, 1), labels.repeat(self.eot_iter), reduction="sum")
                grad = torch.autograd.grad(loss, adv)[0]
                adv = adv.detach() + self.alpha * grad.sign()
                delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
                adv = torch.clamp(images + delta, min=0, max=1).detach()
            return adv

    s = r.settings
    alpha = 2.5 * r.eps / s.pgd_steps
    if r.target.path == "eot":
        return SharedEncoderEOTPGD(r.target, eps=r.eps, alpha=alpha, steps=s.pgd_steps, eot_iter=r.eot_iter, random_start=r.random_start)
    return torchattacks.PGD(r.target, eps=r.eps, alpha=alpha, steps=s.pgd_steps, random_start=r.random_start)
