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


def _pgd_l2(model, eps, path="direct", steps=10, random_start=False):
    s = AttackSettings(pgd_steps=steps, eot_iter=1, batch_size=N)
    return ATTACKS["pgd_l2"].build(AttackRequest(AttackTarget(model, path), eps, s, random_start=random_start))


def test_pgd_l2_iterates_equal_torchattacks_where_the_gradient_is_not_tiny(linear_case):
    import torchattacks

    model, x, y = linear_case
    ours = _pgd_l2(model, 0.5)(x, y)
    ref = torchattacks.PGDL2(AttackTarget(model, "direct"), eps=0.5, alpha=2.5 * 0.5 / 10, steps=10, random_start=False)(x, y)
    assert (ours - ref).abs().max() < 1e-5


def test_pgd_l2_still_steps_where_cross_entropy_saturates(linear_case):
    """A model 15 times as confident: the same decision boundaries (so the same minimal distances), but logit
    margins of tens, so float32 cross-entropy gradients of 1e-12 and below. torchattacks' PGDL2 (norm + 1e-10)
    no longer moves; ours breaks as before."""
    import torchattacks

    model, x, y = linear_case
    confident = Linear().eval()
    with torch.no_grad():
        confident.fc.weight.mul_(15.0)
    eps = float(model.min_distance(x, y, "l2").median()) * 1.5
    ours_adv = _pgd_l2(confident, eps, steps=40)(x, y)
    ref_adv = torchattacks.PGDL2(AttackTarget(confident, "direct"), eps=eps, alpha=2.5 * eps / 40, steps=40, random_start=False)(x, y)
    with torch.no_grad():
        ours = (confident(ours_adv).argmax(1) == y).float().mean()
        ref = (confident(ref_adv).argmax(1) == y).float().mean()
    assert ref > 0.75  # the saturation this guards against is real (unsaturated, both leave 19%)
    assert ours < 0.5  # at 1.5x the median minimal distance, most examples break


def test_pgd_l2_averages_gradients_over_draws_on_the_eot_path(linear_case):
    """EOT: eot_iter forward passes per step; counted on the target."""
    model, x, y = linear_case
    calls = []
    target = AttackTarget(model, "eot")
    target.register_forward_hook(lambda *a: calls.append(1))
    s = AttackSettings(pgd_steps=3, eot_iter=4, batch_size=N)
    ATTACKS["pgd_l2"].build(AttackRequest(target, 0.5, s, random_start=False))(x, y)
    assert len(calls) == 3 * 4


def test_square_oracle_is_a_fixed_function_of_the_image(trained_vib):
    """The fixed-noise oracle Square queries on the EOT path: the same output for the same image in any batch, across
    calls (a black-box search assumes a function), while the model's own predictor is random; it is the predictor
    (log of the mean softmax) under eval_samples x oracle_draws draws of z given explicitly."""
    from vibbench.evaluation.attacks.square import FixedNoiseOracle

    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    oracle = FixedNoiseOracle(trained_vib.eval(), draws=3, seed=0)
    with torch.no_grad():
        a, b = oracle(x), oracle(x[[3, 0, 5]])
        assert torch.equal(a, oracle(x))
        assert torch.allclose(a[[3, 0, 5]], b, atol=1e-6)
        assert not torch.equal(trained_vib(x), trained_vib(x))
        eps = oracle.eps.expand(-1, 6, -1)
        assert eps.shape[0] == 3 * trained_vib.eval_samples
        out = trained_vib.forward_details(x, num_samples=eps.shape[0], eps=eps)
        direct = torch.log_softmax(out.logits, -1).exp().mean(0).log()
        assert torch.allclose(a, direct, atol=1e-5)


def test_square_oracle_takes_a_linear_decoders_product_form_and_other_decoders_the_samples(trained_vib, monkeypatch):
    """With an nn.Linear decoder the oracle's draws are one product of std with the noise-scaled weights (z is never
    formed, nor a forward_details: mu and std only); a decoder that is not nn.Linear gets the samples. Both give the
    same outputs up to float rounding."""
    import copy

    from vibbench.evaluation.attacks.square import FixedNoiseOracle

    samples = []
    real = type(trained_vib).forward_details
    monkeypatch.setattr(type(trained_vib), "forward_details", lambda self, x, num_samples=None, eps=None: samples.append(num_samples) or real(self, x, num_samples, eps))
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    wrapped = copy.deepcopy(trained_vib).eval()
    wrapped.decoder = nn.Sequential(wrapped.decoder)  # the same function, not an nn.Linear
    with torch.no_grad():
        fast = FixedNoiseOracle(trained_vib.eval(), draws=3, seed=1)(x)
        slow = FixedNoiseOracle(wrapped, draws=3, seed=1)(x)
    assert samples == [3 * trained_vib.eval_samples]  # the wrapped decoder's samples only
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(fast.exp().sum(1), torch.ones(7))


@pytest.mark.parametrize(("path", "margin"), [("direct", 0.0), ("mean", 1.0), ("eot", 1.0)])
def test_square_stops_beyond_the_boundary_only_on_a_stochastic_model(trained_vib, trained_mlp, path, margin):
    model = trained_mlp if path == "direct" else trained_vib
    s = AttackSettings(square_queries=10, square_stop_margin=1.0, batch_size=N)
    attack = ATTACKS["square"].build(AttackRequest(AttackTarget(model, path), 0.1, s))
    assert attack.stop_margin == margin
    assert type(attack.model).__name__ == ("FixedNoiseOracle" if path == "eot" else "AttackTarget")


def test_eot_draws_are_shared_by_the_images_of_a_call_and_fresh_at_every_call(trained_vib):
    """Without fixed noise, an EOT step's k draws come from torch's generator, shared by the images of the call: two
    copies of one image get the same k outputs; the next call draws again; a seed makes them reproducible."""
    target = AttackTarget(trained_vib.eval(), "eot")
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(6)).repeat(3, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(0)
        a, b = target.draws(x, 4), target.draws(x, 4)
        torch.manual_seed(0)
        again = target.draws(x, 4)
    assert a.shape == (4, 3, trained_vib.num_classes)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])  # shared by the images
    assert not torch.allclose(a[0, 0], a[1, 0]) and not torch.allclose(a, b)  # k different draws, fresh per call
    assert torch.equal(a, again)


def test_shared_encoder_draws_equal_separate_passes_and_their_gradients(trained_vib):
    """k draws of the S-sample predictor from one encoder pass = k forward passes under the same noise: the same
    outputs and the same input gradient of the summed cross-entropy (the EOT step's), up to float rounding."""
    model = trained_vib.eval()
    k, s = 4, model.eval_samples
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(5)
    eps = torch.randn(k * s, 5, model.latent_dim, generator=torch.Generator().manual_seed(4))
    target = AttackTarget(model, "eot")
    xa = x.clone().requires_grad_(True)
    shared = target.draws(xa, k, eps=eps)
    (g_shared,) = torch.autograd.grad(torch.nn.functional.cross_entropy(shared.flatten(0, 1), y.repeat(k), reduction="sum"), xa)
    xb = x.clone().requires_grad_(True)
    separate = torch.stack([model.forward_details(xb, num_samples=s, eps=eps[j * s : (j + 1) * s]).prediction() for j in range(k)])
    (g_sep,) = torch.autograd.grad(sum(torch.nn.functional.cross_entropy(separate[j], y, reduction="sum") for j in range(k)), xb)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_shared, g_sep, atol=1e-6, rtol=1e-4)
    passes = []
    hook = model.backbone.register_forward_hook(lambda *a: passes.append(1))
    with torch.no_grad():
        assert target.draws(x, k).shape == (k, 5, 10)
    hook.remove()
    assert len(passes) == 1


def test_eot_pgd_is_torchattacks_eotpgd_with_the_draws_shared(linear_case):
    """On a function whose draws are plain calls, our EOT-PGD's iterates equal torchattacks' EOTPGD's."""
    import torchattacks

    model, x, y = linear_case
    s = AttackSettings(pgd_steps=10, eot_iter=3, batch_size=N)
    ours = ATTACKS["pgd"].build(AttackRequest(AttackTarget(model, "eot"), 0.1, s, random_start=False))(x, y)
    ref = torchattacks.EOTPGD(AttackTarget(model, "eot"), eps=0.1, alpha=2.5 * 0.1 / 10, steps=10, eot_iter=3, random_start=False)(x, y)
    assert torch.equal(ours, ref)


def test_pgd_on_a_deterministic_path_is_torchattacks_pgd(linear_case):
    """Without `done`, PGD on the direct path (random start included, under the same seed) is torchattacks' PGD."""
    import torchattacks

    model, x, y = linear_case
    s = AttackSettings(pgd_steps=10, batch_size=N)
    torch.manual_seed(3)
    ours = ATTACKS["pgd"].build(AttackRequest(AttackTarget(model, "direct"), 0.1, s))(x, y)
    torch.manual_seed(3)
    ref = torchattacks.PGD(AttackTarget(model, "direct"), eps=0.1, alpha=2.5 * 0.1 / 10, steps=10, random_start=True)(x, y)
    assert torch.equal(ours, ref)


def test_iterate_freezes_done_images_at_the_checks():
    """Image k grows by 1 a step and is done from value k on; done is asked before the first step and every
    CHECK_EVERY steps, so it stops at the first check at or after k (and never-done images take every step)."""
    from vibbench.evaluation.attacks.early_stop import CHECK_EVERY, iterate

    threshold = torch.tensor([0.0, 1.0, 4.0, 5.0, 100.0])
    asked = []

    def done(adv, rows):
        asked.append(rows.tolist())
        return adv >= threshold[rows]

    out = iterate(torch.zeros(5), 10, lambda a, rows: a + 1, done)
    assert CHECK_EVERY == 4
    assert out.tolist() == [0.0, 4.0, 4.0, 8.0, 10.0]
    assert asked == [[0, 1, 2, 3, 4], [1, 2, 3, 4], [3, 4]]  # checks at steps 0, 4, 8 on the images still stepping
    assert iterate(torch.zeros(5), 10, lambda a, rows: a + 1, None).tolist() == [10.0] * 5


@pytest.mark.parametrize("name", ["pgd", "pgd_l2"])
def test_early_stop_keeps_broken_points_and_otherwise_the_plain_iterates(linear_case, name):
    """On a deterministic model (each image's iterates independent of the batch): an image early stopping froze is
    misclassified where it stopped; every other image ends where the plain attack ends. So the images it leaves
    robust are a subset of the plain attack's."""
    model, x, y = linear_case
    eps = BUDGET[ATTACKS[name].norm] * 1.5
    s = AttackSettings(pgd_steps=12, eot_iter=1, batch_size=N)
    build = lambda: ATTACKS[name].build(AttackRequest(AttackTarget(model, "direct"), eps, s, random_start=False))
    plain = build()(x, y)
    stopping = build()
    stopping.done = lambda adv, rows: model(adv).argmax(1) != y[rows]
    early = stopping(x, y)
    with torch.no_grad():
        broken_plain, broken_early = model(plain).argmax(1) != y, model(early).argmax(1) != y
    same = (early - plain).flatten(1).abs().amax(1) < 1e-6
    assert (broken_early | same).all()
    assert (broken_plain <= broken_early).all() and 0 < broken_plain.sum() and not same.all()
