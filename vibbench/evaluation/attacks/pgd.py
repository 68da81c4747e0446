"""PGD, projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018), L-infinity: random start, step 2.5 eps / steps. On the EOT path: EOT-PGD."""

from __future__ import annotations

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    s = r.settings
    alpha = 2.5 * r.eps / s.pgd_steps
    if r.target.path == "eot":
        return torchattacks.EOTPGD(r.target, eps=r.eps, alpha=alpha, steps=s.pgd_steps, eot_iter=r.eot_iter, random_start=r.random_start)
    return torchattacks.PGD(r.target, eps=r.eps, alpha=alpha, steps=s.pgd_steps, random_start=r.random_start)
