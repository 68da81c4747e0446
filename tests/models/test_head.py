"""The VIB head against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from vibbench import kl_divergence, reparameterize
from vibbench.models.head import log_mean_softmax, log_softplus, std_from_preactivation


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 256, generator=g, dtype=torch.float64) * 3
    std = torch.rand(64, 256, generator=g, dtype=torch.float64) * 4 + 1e-3
    ref = torch_kl(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(std))).sum(-1)
    assert kl_divergence(mu, std).shape == (64,)
    torch.testing.assert_close(kl_divergence(mu, std), ref)
    torch.testing.assert_close(kl_divergence(mu, std, std.log()), ref)


def test_kl_is_zero_at_the_prior_and_sums_over_dimensions():
    assert kl_divergence(torch.zeros(3, 7), torch.ones(3, 7)).abs().max() == 0
    # one unit of mean in each of K dims costs K / 2 nats: summed, not averaged
    torch.testing.assert_close(kl_divergence(torch.ones(2, 10), torch.ones(2, 10)), torch.full((2,), 5.0))


def test_log_softplus_matches_float64_reference():
    t = torch.linspace(-150, 60, 5001)
    ref = torch.nn.functional.softplus(t.double()).log()
    # float64 softplus itself underflows below about -745; in the tested range it does not
    torch.testing.assert_close(log_softplus(t).double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [100.0, 1e4])
def test_head_is_finite_at_extreme_preactivations(scale):
    s = torch.linspace(-scale, scale, 2001, requires_grad=True)
    mu = torch.linspace(-scale, scale, 2001, requires_grad=True)
    std, log_std = std_from_preactivation(s)
    kl = kl_divergence(mu[None], std[None], log_std[None])
    z = reparameterize(mu[None], std[None], 3, generator=torch.Generator().manual_seed(0))
    (kl.sum() + z.sum()).backward()
    for t in (std, log_std, kl, z, s.grad, mu.grad):
        assert torch.isfinite(t).all()
    # deep in the underflow region log std is exactly the shifted pre-activation
    assert log_std[0].item() == pytest.approx(-scale - 5.0)


def test_reparameterize_shape_given_noise_and_moments():
    mu, std = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]])
    eps = torch.randn(4, 1, 2)
    torch.testing.assert_close(reparameterize(mu, std, 4, eps=eps), mu + eps * std)
    z = reparameterize(mu.expand(1000, 2), std.expand(1000, 2), 50, generator=torch.Generator().manual_seed(1))
    assert z.shape == (50, 1000, 2)
    flat = z.reshape(-1, 2)
    # 50k draws: standard errors of about std / 224 for the mean and 0.6% for the std
    torch.testing.assert_close(flat.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(flat.std(0), std[0], rtol=0.03, atol=0)
    with pytest.raises(ValueError):
        reparameterize(mu, std, 2, eps=torch.zeros(3, 1, 2))


def test_log_mean_softmax_averages_probabilities_not_logits():
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 0.0, 4.0]]])  # two samples, one example
    p = torch.softmax(logits.double(), -1).mean(0)
    torch.testing.assert_close(log_mean_softmax(logits).double(), p.log(), rtol=1e-6, atol=1e-6)
    e4 = math.exp(4)
    hand = math.log(0.5 * (e4 / (e4 + 2)) + 0.5 * (1 / (e4 + 2)))
    assert log_mean_softmax(logits)[0, 0].item() == pytest.approx(hand, rel=1e-6)
    # averaging logits instead would give equal first and last classes' log-probabilities too, but a larger middle gap
    assert not torch.allclose(log_mean_softmax(logits), torch.log_softmax(logits.mean(0), -1))


def test_log_mean_softmax_is_as_accurate_as_torchs_log_softmax_form_with_its_gradient_and_along_either_dim():
    """The fast form (logits - logsumexp) against float64, values and input gradients, at logits up to +-1e4 (where a
    naive exp overflows): no further from it than torch's own float32 log_softmax form; and with the samples along dim 1."""

    def torch_form(x):
        return torch.logsumexp(torch.log_softmax(x, -1), 0) - math.log(x.shape[0])

    logits = torch.randn(24, 50, 10, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 4, 50)[None, :, None]
    weights = torch.randn(50, 10, generator=torch.Generator().manual_seed(1))

    def value_and_grad(f, x):
        x = x.clone().requires_grad_(True)
        y = f(x)
        (y * weights.to(x.dtype)).sum().backward()
        return y.detach().double(), x.grad.double()

    exact = value_and_grad(torch_form, logits.double())
    ours, theirs = value_and_grad(log_mean_softmax, logits), value_and_grad(torch_form, logits)
    for k in (0, 1):  # the value, the gradient
        err_ours, err_theirs = (ours[k] - exact[k]).abs().max(), (theirs[k] - exact[k]).abs().max()
        assert err_ours <= 2 * err_theirs + 1e-6, (k, err_ours, err_theirs)
    torch.testing.assert_close(ours[0], exact[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_mean_softmax(logits.transpose(0, 1).contiguous(), dim=1), log_mean_softmax(logits))


@pytest.mark.parametrize("beta", [0.0, 1e-3, 1.0, 1e3])
@pytest.mark.parametrize("training", [True, False])
def test_vib_head_and_loss_stay_finite_for_encoder_outputs_up_to_1e4(beta, training):
    """Encoder outputs (mu and the std pre-activation s) on a grid over [-1e4, 1e4], every (mu, s) pair."""
    from vibbench import create_model
    from vibbench.training.losses import training_loss

    model = create_model("mlp_vib", beta=beta).train(training)
    grid = torch.tensor([-1e4, -1e3, -104.0, -20.0, -1.0, 0.0, 1.0, 20.0, 104.0, 1e3, 1e4])
    mu, s = torch.cartesian_prod(grid, grid).T  # 121 examples
    k = model.latent_dim
    h = torch.cat([mu[:, None].expand(-1, k), s[:, None].expand(-1, k)], dim=1).requires_grad_()
    model.backbone = torch.nn.Identity()
    model.encoder_head = torch.nn.Identity()
    model.as_images = lambda x: x  # feed the encoder's output directly
    out = model.forward_details(h)
    terms = training_loss(out, torch.arange(h.shape[0]) % 10, beta=model.method.beta)
    terms.loss.backward()
    for name, t in {"std": out.std, "log_std": out.log_std, "z": out.z, "logits": out.logits, "kl": out.kl,
                    "prediction": out.prediction(), "loss": terms.loss, "grad": h.grad}.items():
        assert torch.isfinite(t).all(), name
    assert out.z.shape[0] == (1 if training else 12)
    # the largest rate: mu = 1e4 and std = softplus(1e4 - 5): K / 2 * (mu^2 + std^2 - 2 log std - 1), to float32 precision
    big = torch.tensor(1e4, dtype=torch.float64)
    std = torch.nn.functional.softplus(big - 5)
    expected = k / 2 * (big**2 + std**2 - 2 * std.log() - 1)
    assert out.kl.max().double().item() == pytest.approx(expected.item(), rel=1e-5)
