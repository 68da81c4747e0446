"""What only a CUDA device can show: training on it is repeatable, populations match one-by-one training there,
the shared-encoder EOT and the fused head agree with the CPU's eager computations. Skipped without CUDA
(`make gpu-check` runs them with the other GPU tests)."""

import copy

import pytest
import torch

from vibbench import create_model
from vibbench.evaluation.attacks.target import AttackTarget
from vibbench.evaluation.inference import mean_mode, predict
from vibbench.training.config import TrainConfig
from vibbench.training.population import train_population
from vibbench.training.single import train_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CFG = TrainConfig(dataset="synthetic", epochs=1, batch_size=50)


def _built(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, **overrides).to("cuda")


def _on_cuda(data, n=None):
    return data.train.images[:n].cuda(), data.train.labels[:n].cuda()


def test_training_on_cuda_is_repeatable(synthetic):
    """Deterministic algorithms and cuBLAS's deterministic workspace: the same seed gives the same weights."""
    x, y = _on_cuda(synthetic, 1000)
    runs = []
    for _ in range(2):
        model = _built("mlp_vib")
        train_model(model, x, y, CFG, seed=1, label="mlp_vib")
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_population_on_cuda_matches_one_by_one(synthetic):
    names = ["mlp_deterministic", "mlp_label_smoothing", "mlp_confidence_penalty", "mlp_dropout"]
    x, y = _on_cuda(synthetic, 500)
    solo = [_built(n) for n in names]
    solo_results = [train_model(m, x, y, CFG, seed=3, label=n) for m, n in zip(solo, names)]
    pop = [_built(n) for n in names]
    pop_results = train_population(pop, x, y, CFG, seed=3, labels_of_members=names)
    for name, a, b, ra, rb in zip(names, solo, pop, solo_results, pop_results):
        assert ra.history[0]["loss"] == pytest.approx(rb.history[0]["loss"], rel=1e-5), name
        diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        assert diff < 1e-4, name  # TF32 is off by default for matmuls: float summation order only


def test_model_on_cuda_matches_cpu(trained_vib, synthetic):
    cpu = trained_vib.eval()
    gpu = copy.deepcopy(cpu).to("cuda")
    x = synthetic.test.images[:200]
    with torch.no_grad(), mean_mode(cpu, True), mean_mode(gpu, True):
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-4)


def test_shared_encoder_eot_on_cuda_equals_separate_passes(trained_vib):
    model = copy.deepcopy(trained_vib).to("cuda").eval()
    k, s = 4, model.eval_samples
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.rand(5, 1, 28, 28, generator=g, device="cuda")
    y = torch.arange(5, device="cuda")
    eps = torch.randn(k * s, 5, model.latent_dim, generator=g, device="cuda")
    xa = x.clone().requires_grad_(True)
    shared = AttackTarget(model, "eot").draws(xa, k, eps=eps)
    (g_shared,) = torch.autograd.grad(torch.nn.functional.cross_entropy(shared.flatten(0, 1), y.repeat(k), reduction="sum"), xa)
    xb = x.clone().requires_grad_(True)
    separate = torch.stack([model.forward_details(xb, num_samples=s, eps=eps[j * s : (j + 1) * s]).prediction() for j in range(k)])
    (g_sep,) = torch.autograd.grad(sum(torch.nn.functional.cross_entropy(separate[j], y, reduction="sum") for j in range(k)), xb)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_shared, g_sep, atol=1e-5, rtol=1e-4)


def test_fused_head_predictor_is_the_eager_one_in_distribution(trained_vib, synthetic):
    """On CUDA the 12-sample predictor draws z in the fused kernel (its own Philox noise): not the same draws as
    the eager head's, so compared by accuracy on the test split, where two independent draws differ by noise only."""
    model = copy.deepcopy(trained_vib).to("cuda").eval()
    x, y = synthetic.test.images.cuda(), synthetic.test.labels.cuda()
    accs = {}
    for impl in ("fused", "eager"):
        model.head_impl = impl
        torch.manual_seed(0)
        accs[impl] = (predict(model, x) == y).float().mean().item()
    assert abs(accs["fused"] - accs["eager"]) < 0.02, accs
