"""The VIB head against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from vibbench import kl_divergence, reparameterize
from vibbench.head import log_mean_softmax, log_softplus, std_from_preactivation


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
