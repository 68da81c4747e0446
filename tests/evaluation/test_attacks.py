"""The attack registry: every spec is complete and its builder attacks in its declared norm; the attack target."""

import pytest
import torch
from torch import nn

from vibbench.evaluation.attacks.adversarial import perturbation_norm
from vibbench.evaluation.attacks.registry import ATTACKS
from vibbench.evaluation.attacks.target import AttackRequest, AttackTarget
from vibbench.evaluation.settings import NORMS, AttackSettings

N = 32
BUDGET = {"linf": 0.1, "l2": 0.5}
TINY = AttackSettings(pgd_steps=5, eot_iter=2, cw_steps=30, apgd_steps=5, fab_steps=5, square_queries=30, batch_size=N)


class Linear(nn.Module):
    """A linear classifier on 1x8x8 images: its smallest adversarial perturbations have closed forms."""

    stochastic = False
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.mean_mode = False
        self.fc = nn.Linear(64, 10)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 64, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))

    def min_distance(self, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
        """Per example: the distance in `norm` from x to the nearest point classified otherwise (ignoring the
        [0, 1] box, which can only make it larger): min over j != y of (f_y - f_j) / ||w_y - w_j||_*, with
        ||.||_* the dual norm (L2 for L2, L1 for L-inf)."""
        with torch.no_grad():
            f = self(x)
        w = self.fc.weight
        margin = f.gather(1, y[:, None]) - f  # (N, C)
        dual = {"l2": 2, "linf": 1}[norm]
        dist = margin / (w[y][:, None, :] - w[None]).norm(p=dual, dim=-1)  # (N, C); 0 / 0 at j = y
        return dist.scatter(1, y[:, None], float("inf")).amin(1)


@pytest.fixture(scope="module")
def linear_case():
    model = Linear().eval()
    x = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correctly classified
    return model, x, y


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_spec_is_complete(name):
    spec = ATTACKS[name]
    assert spec.name == name
    assert isinstance(spec.display_name, str) and spec.display_name.strip()
    assert spec.norm in NORMS
    assert all(isinstance(v, bool) for v in (spec.white_box, spec.expensive, spec.minimal))
    assert callable(spec.build)
    assert len({a.display_name for a in ATTACKS.values()}) == len(ATTACKS)


@pytest.mark.parametrize("path", ["direct", "eot"])
@pytest.mark.parametrize("name", [n for n, a in ATTACKS.items() if not a.minimal])
def test_budgeted_attacks_stay_within_their_budget_in_their_norm(name, path, linear_case):
    model, x, y = linear_case
    spec = ATTACKS[name]
    eps = BUDGET[spec.norm]
    torch.manual_seed(0)
    attack = spec.build(AttackRequest(AttackTarget(model, path), eps, TINY, seed=0, num_classes=10))
    adv = attack(x, y).detach()
    delta = adv - x
    assert adv.min() >= 0 and adv.max() <= 1
    assert perturbation_norm(delta, spec.norm).max() <= eps + 1e-5
    if spec.norm == "linf":
        # beyond the L2 ball of the same radius: the attack uses the L-inf box, not an L2 ball
        assert perturbation_norm(delta, "l2").max() > 2 * eps
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).any()  # it attacks: some examples are broken within the budget


@pytest.mark.parametrize("name", [n for n, a in ATTACKS.items() if a.minimal])
def test_minimal_attacks_never_beat_the_closed_form_distance(name, linear_case):
    model, x, y = linear_case
    spec = ATTACKS[name]
    torch.manual_seed(0)
    attack = spec.build(AttackRequest(AttackTarget(model, "direct"), 0.0, TINY, seed=0, cw_c=10.0))
    adv = attack(x, y).detach()
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert fooled.sum() >= N // 2
    found = perturbation_norm(adv - x, spec.norm)[fooled]
    bound = model.min_distance(x, y, spec.norm)[fooled]
    assert (found >= bound * (1 - 1e-5)).all()


def test_attack_target_fits_the_torchattacks_contract(trained_vib):
    x = torch.rand(3, 1, 28, 28)
    mean = AttackTarget(trained_vib, "mean")
    with torch.no_grad():
        assert torch.equal(mean(x), mean(x))  # the mean path is deterministic
        assert mean(x).shape == (3, 10)
    assert trained_vib.mean_mode is False  # restored


def test_the_request_averages_gradients_only_on_the_eot_path(linear_case):
    model = linear_case[0]
    assert AttackRequest(AttackTarget(model, "eot"), 0.1, TINY).eot_iter == TINY.eot_iter == 2
    assert AttackRequest(AttackTarget(model, "mean"), 0.1, TINY).eot_iter == 1
