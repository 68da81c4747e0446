"""The judge: R independent noise draws of a stochastic predictor, noise indexed per example."""

import torch

from vibbench.evaluation.judge import Judge, example_noise
from vibbench.models.head import log_mean_softmax


def test_deterministic_models_are_judged_once(trained_mlp, synthetic):
    x, y = synthetic.test.images[:50], synthetic.test.labels[:50]
    judge = Judge(trained_mlp, y, torch.arange(50), draws=7, seed=0)
    out = judge.correct(x)
    assert out.shape == (1, 50)
    assert torch.equal(out[0], trained_mlp(x).argmax(1) == y)


def test_noise_belongs_to_the_example_not_to_its_batch_position(trained_vib, synthetic):
    x, y = synthetic.test.images[:60], synthetic.test.labels[:60]
    index = torch.arange(1000, 1060)
    whole = Judge(trained_vib, y, index, draws=4, seed=3).correct(x)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    # the same images in another order, in batches of 7, and a subset: every image keeps its judgement
    shuffled = Judge(trained_vib, y[perm], index[perm], draws=4, seed=3, batch_size=7).correct(x[perm])
    assert torch.equal(shuffled, whole[:, perm])
    part = Judge(trained_vib, y, index, draws=4, seed=3).correct(x[10:20], torch.arange(10, 20))
    assert torch.equal(part, whole[:, 10:20])


def test_each_draw_is_the_predictor_under_that_draws_noise(trained_vib, synthetic):
    """Checked by hand: mu and std from the encoder, z = mu + eps std with the example's noise, the decoder, and
    the softmax averaged over the 12 samples (not the logits)."""
    x, y = synthetic.test.images[:20], synthetic.test.labels[:20]
    index = torch.arange(20)
    judge = Judge(trained_vib, y, index, draws=3, seed=11)
    got = judge.correct(x)
    with torch.no_grad():
        d = trained_vib.forward_details(x)
        for r in range(3):
            eps = example_noise(index, 11, r, trained_vib.eval_samples, trained_vib.latent_dim)
            logits = trained_vib.decoder(d.mu[None] + eps * d.std[None])
            probs = torch.softmax(logits, -1).mean(0)
            assert torch.equal(got[r], probs.argmax(-1) == y)
            torch.testing.assert_close(log_mean_softmax(logits), probs.log(), atol=1e-5, rtol=1e-5)


def test_draws_are_independent_and_reproducible():
    idx = torch.arange(5)
    a, b = example_noise(idx, 0, 0, 12, 8), example_noise(idx, 0, 1, 12, 8)
    assert torch.equal(a, example_noise(idx, 0, 0, 12, 8))
    assert not torch.equal(a, b) and not torch.equal(a, example_noise(idx, 1, 0, 12, 8))
    big = example_noise(torch.arange(400), 0, 0, 12, 8)  # standard normal: mean 0, variance 1
    assert abs(float(big.mean())) < 0.02 and abs(float(big.var()) - 1) < 0.03
    # neighbouring indices and draws are not correlated
    assert abs(float(torch.corrcoef(torch.stack([big[:, :-1].flatten(), big[:, 1:].flatten()]))[0, 1])) < 0.03


def test_a_noisy_model_disagrees_with_itself_across_draws(trained_vib, synthetic):
    """With a large std the draws disagree on some images; the mean-path judge is deterministic."""
    x, y = synthetic.test.images[:200], synthetic.test.labels[:200]
    judge = Judge(trained_vib, y, torch.arange(200), draws=5, seed=0)
    with torch.no_grad():
        saved = trained_vib.encoder_head.bias.clone()
        trained_vib.encoder_head.bias[trained_vib.latent_dim :] += 8.0  # std = softplus(s + 3): about 3
        try:
            noisy = judge.correct(x)
        finally:
            trained_vib.encoder_head.bias.copy_(saved)
    assert (noisy.any(0) & ~noisy.all(0)).any()
    trained_vib.mean_mode = True
    try:
        assert Judge(trained_vib, y, torch.arange(200), draws=5, seed=0).draws == 1
    finally:
        trained_vib.mean_mode = False
