"""FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015), L-infinity. On the EOT path: one EOT-PGD step of size eps, without random start."""

from __future__ import annotations

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    if r.target.path == "eot":
        return torchattacks.EOTPGD(r.target, eps=r.eps, alpha=r.eps, steps=1, eot_iter=r.eot_iter, random_start=False)
    return torchattacks.FGSM(r.target, eps=r.eps)
