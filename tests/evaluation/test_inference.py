"""Seeded inference: modes restored whatever happens, the noise fixed by the seed, the caller's random stream untouched."""

import pytest
import torch

from vibbench import create_model
from vibbench.evaluation.inference import eval_mode, mean_mode, predict, predictions, seeded_noise

CPU = torch.device("cpu")


@pytest.fixture
def vib():
    torch.manual_seed(0)
    return create_model("mlp_vib")


@pytest.mark.parametrize("training, mean", [(True, False), (False, True)])
def test_modes_are_restored_after_an_exception(vib, training, mean):
    vib.train(training)
    vib.mean_mode = mean
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(vib), mean_mode(vib, not mean):
            assert not vib.training and vib.mean_mode is (not mean)
            assert not any(m.training for m in vib.modules())
            raise RuntimeError("inside")
    assert vib.training is training and vib.mean_mode is mean
    assert all(m.training is training for m in vib.modules())


def test_the_seed_fixes_the_stochastic_prediction(vib):
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))

    def sampled(seed):
        with torch.no_grad(), eval_mode(vib), seeded_noise(seed, CPU):
            return vib(x)

    assert torch.equal(sampled(1), sampled(1))
    assert not torch.allclose(sampled(1), sampled(2))
    with torch.no_grad(), eval_mode(vib), mean_mode(vib, True):
        assert torch.equal(vib(x), vib(x))  # the mean path draws no noise


def test_seeded_noise_leaves_the_callers_stream_as_it_was():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with seeded_noise(7, CPU):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(4))  # inside, the stream is torch.manual_seed(seed)'s


def test_predict_is_the_argmax_of_the_seeded_predictor_and_keeps_train_mode(vib):
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    vib.train()
    classes = predict(vib, x, batch_size=7, seed=5)
    assert vib.training
    with torch.no_grad(), eval_mode(vib), seeded_noise(5, CPU):
        expected = torch.cat([vib(x[i : i + 7]).argmax(-1) for i in range(0, 30, 7)])
    assert torch.equal(classes, expected)


def test_predictions_are_seeded_and_mean_mode_is_deterministic(trained_vib, synthetic):
    x = synthetic.test.images[:64]
    a, kl_a = predictions(trained_vib, x, "predictor", seed=1)
    b, _ = predictions(trained_vib, x, "predictor", seed=1)
    assert torch.equal(a, b) and kl_a.shape == (64,) and (kl_a >= 0).all()
    m1, _ = predictions(trained_vib, x, "mean", seed=1)
    m2, _ = predictions(trained_vib, x, "mean", seed=2)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(a.exp().sum(1), torch.ones(64, dtype=torch.float64))
