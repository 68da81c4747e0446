"""Adversarial robustness with torchattacks, honestly measured.

Attacks run in [0, 1] pixel space through `AttackTarget` (target.py), which fits any registry model to
torchattacks' contract (images in [0, 1] -> one (N, C) tensor of logits). Stochastic models
(VIB) are attacked two ways (Athalye et al. 2018; Korshunova et al. 2021): through the
deterministic mean path (z = mu) and through the stochastic predictor itself with expectation
over transformation (EOT: gradients averaged over `eot_iter` forward passes). Robustness is
always judged on the model's own predictor (the 12-sample average for VIB) under a fixed
noise seed, and an example counts as robust at eps only if it survives every attack run
against it at every budget up to eps (the worst case).

Each attack is one module here, with its paper; registry.py lists them (`ATTACKS`), and
adversarial.py runs one. torchattacks is imported only inside the builders, so the settings,
which validate attack names against the registry, load without it.
"""
