"""PGD in L2 (Madry et al., ICLR 2018): random start, step 2.5 eps / steps. torchattacks has no EOT variant,
so on the EOT path its gradients are single-draw."""

from __future__ import annotations

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    s = r.settings
    return torchattacks.PGDL2(r.target, eps=r.eps, alpha=2.5 * r.eps / s.pgd_steps, steps=s.pgd_steps, random_start=r.random_start)
