"""Square attack (Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
random search", ECCV 2020): black box, score-based, L-infinity, one restart."""

from __future__ import annotations

from vibbench.evaluation.attacks.target import AttackRequest


def build(r: AttackRequest):
    import torchattacks

    return torchattacks.Square(r.target, norm="Linf", eps=r.eps, n_queries=r.settings.square_queries, n_restarts=1, seed=r.seed)
