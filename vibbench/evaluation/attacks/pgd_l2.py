"""PGD in L2 (Madry et al., ICLR 2018): random start, step 2.5 eps / steps; on the EOT path the gradient of
each step is averaged over `eot_iter` forward passes (EOT-PGD in L2, as torchattacks' EOTPGD does in L-inf).

It is torchattacks' PGDL2 with two changes, both in how a step's direction is computed:

- torchattacks divides the gradient by its norm plus 1e-10 (and takes it of the batch-mean loss). A confident
  model's cross-entropy saturates in float32: its input gradients are 1e-15 and smaller, the step shrinks to
  nothing, and a well-trained MNIST MLP kept 80% "robust accuracy" at L2 eps = 20 (every image can be turned
  into any other at 28). Here the per-example gradient of the summed loss is divided by its own norm (after
  scaling by its largest entry, so the norm cannot underflow), so the step has length alpha whenever the gradient is not exactly
  zero. Where it is exactly zero the image does not move; the zero-gradient check reports such examples.
- the EOT average over draws (torchattacks has no L2 EOT attack), taken by `AttackTarget.draws`: one encoder
  pass for all draws of a stochastic model.

With `done` set (the harness sets it from the judge) an image stops once it is broken (attacks/early_stop.py).

With eot_iter = 1 and a gradient far above 1e-10 the iterates equal torchattacks' PGDL2 (a test checks this).
"""

from __future__ import annotations

import torch

from vibbench.evaluation.attacks.early_stop import iterate
from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    class EOTPGDL2(torchattacks.PGDL2):
        done = None  # attacks/early_stop.py

        def __init__(self, model, *, eps, alpha, steps, random_start, eot_iter):
            super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
            self.eot_iter = eot_iter

        def forward(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            n = len(images)
            adv = images.clone()
            if self.random_start:  # as torchattacks: a uniform radius in a random direction
                delta = torch.empty_like(adv).normal_()
                norms = delta.view(n, -1).norm(p=2, dim=1).view(n, 1, 1, 1)
                delta *= torch.zeros_like(norms).uniform_(0, 1) / norms * self.eps
                adv = torch.clamp(adv + delta, min=0, max=1).detach()
            tiny = torch.finfo(torch.float32).tiny

            def step(a, rows):
                k = len(a)
                grad = self.model.loss_gradient(a, labels[rows], self.eot_iter)
                # scaled by the largest entry first, so that squaring 1e-20-sized entries cannot underflow the norm
                grad = grad / grad.view(k, -1).abs().amax(1).clamp_min(tiny).view(k, 1, 1, 1)
                a = a + self.alpha * grad / grad.view(k, -1).norm(p=2, dim=1).clamp_min(tiny).view(k, 1, 1, 1)
                delta = a - images[rows]
                factor = (self.eps / delta.view(k, -1).norm(p=2, dim=1)).clamp(max=1.0)
                return torch.clamp(images[rows] + delta * factor.view(k, 1, 1, 1), min=0, max=1).detach()

            return iterate(adv, self.steps, step, self.done)

    s = r.settings
    return EOTPGDL2(r.target, eps=r.eps, alpha=2.5 * r.eps / s.pgd_steps, steps=s.pgd_steps, random_start=r.random_start, eot_iter=r.eot_iter)
