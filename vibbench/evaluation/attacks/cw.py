"""Carlini & Wagner's L2 attack ("Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017),
the VIB paper's attack. It minimizes the perturbation: robust accuracy at eps counts an example as
broken if CW found an adversarial example with ||delta||_2 <= eps. torchattacks' CW takes one
constant c and has no binary search over it, so the harness runs it at each c of `cw_cs` and keeps,
per example, the smallest successful perturbation.

Two fixes make torchattacks' CW work on MNIST models: (1) its margin takes a max over outputs times
a one-hot mask, which assumes some positive logits; on log-probabilities (the stochastic predictor's
output, all <= 0) the masked zeros win and the margin is constantly 0, so the attack never moves.
CW sees the outputs shifted per example by a detached constant (`PositiveLogits`), which leaves the
margin and its gradient exact. (2) It works in tanh space, where pixels at exactly 0 or 1 (most of
MNIST) sit at atanh(+-1) = +-inf and can never move; CW starts from the images squeezed into
[1e-3, 1 - 1e-3] (`CW_SQUEEZE`), and distances are measured from the original images, so the
squeeze only ever counts against the attack.
"""

from __future__ import annotations

import torch
from torch import nn

from vibbench.evaluation.attacks.target import AttackRequest

CW_SQUEEZE = 1e-3


class PositiveLogits(nn.Module):
    """Outputs shifted per example by a detached constant so that all are >= 1; softmax, argmax and
    every margin are unchanged. Needed by torchattacks' CW (see the module docstring)."""

    def __init__(self, target: nn.Module):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.target(x)
        return out - out.detach().amin(dim=1, keepdim=True) + 1.0


def build(r: AttackRequest, target_map=None):
    """CW at the constant `r.cw_c`, run on the squeezed images (its budget eps is not used: it is minimal).
    `target_map` (images, labels) -> target classes makes it targeted (torchattacks' set_mode_targeted_by_function):
    it then ends at the smallest perturbation its own forward passes classified as the target."""
    import torchattacks

    s = r.settings
    attack = torchattacks.CW(PositiveLogits(r.target), c=r.cw_c, kappa=0, steps=s.cw_steps, lr=s.cw_lr)
    if target_map is not None:
        attack.set_mode_targeted_by_function(target_map, quiet=True)
    return lambda images, labels: attack(images * (1 - 2 * CW_SQUEEZE) + CW_SQUEEZE, labels)
