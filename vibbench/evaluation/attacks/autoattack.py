"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), its standard L-infinity ensemble: APGD-CE, APGD-T (9 targets),
FAB-T (9 targets) and Square, each run on the points still robust.

torchattacks' own AutoAttack passes no step count and runs 10 iterations where the original runs 100;
the ensemble is built here with the steps of the attack settings and labelled with exactly what ran
(`autoattack_label` in settings.py).
"""

from __future__ import annotations

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    s, target = r.settings, r.target
    common = dict(norm="Linf", eps=r.eps, seed=r.seed, n_restarts=1)
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(target, loss="ce", steps=s.apgd_steps, eot_iter=r.eot_iter, **common),
            torchattacks.APGDT(target, steps=s.apgd_steps, eot_iter=r.eot_iter, n_classes=r.num_classes, **common),
            torchattacks.FAB(target, steps=s.fab_steps, multi_targeted=True, n_classes=r.num_classes, **common),
            torchattacks.Square(target, n_queries=s.square_queries, **common),
        ]
    )
