"""The registry and the model contract, for every registered model."""

import pytest
import torch

from vibbench import VibbenchError, create_model, list_models
from vibbench.models.head import log_mean_softmax


def test_registry_is_backbone_times_method():
    names = list_models()
    assert {"mlp_vib", "mlp_deterministic", "mlp_dropout", "mlp_label_smoothing", "mlp_confidence_penalty"} <= set(names)
    for method in ("vib", "deterministic", "dropout", "label_smoothing", "confidence_penalty"):
        assert len(list_models(f"*_{method}")) >= 2
    assert list_models("mlp_*") == sorted(n for n in names if n.startswith("mlp_"))
    assert list_models(["mlp_vib", "conv_v*"]) == ["conv_vib", "mlp_vib"]
    assert list_models("nothing*") == []


def test_unknown_model_names_the_closest_match():
    with pytest.raises(VibbenchError, match="mlp_vib"):
        create_model("mlp_vbi")


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("mlp_vib", {"beta": -1e-3}, "beta must be >= 0"),
        ("mlp_vib", {"beta": float("nan")}, "beta must be >= 0"),
        ("mlp_deterministic", {"beta": 1e-3}, "only applies to VIB"),
        ("mlp_dropout", {"dropout": 1.0}, "dropout must be in"),
        ("mlp_vib", {"gamma": 1.0}, r"^unknown option for model 'mlp_vib' 'gamma'\. Known: beta, .*, train_samples\.$"),
        ("mlp_vib", {"latnt_dim": 8}, r"Did you mean latent_dim\?"),
    ],
)
def test_bad_overrides_are_refused(name, overrides, match):
    with pytest.raises(VibbenchError, match=match):
        create_model(name, **overrides)


def test_none_overrides_are_dropped_and_beta_is_an_override():
    assert create_model("mlp_vib", beta=None).method.beta == 1e-3
    assert create_model("mlp_vib", beta=1e-2).method.beta == 1e-2


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(5, 1, 28, 28)
    y = torch.randint(0, 10, (5,))
    model.train()
    out = model(x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        flat = model(x.reshape(5, 784))
    assert flat.shape == (5, 10) and torch.isfinite(flat).all()
    details = model.forward_details(x)
    assert details.kl.shape == (5,) and details.mu.shape == (5, model.latent_dim)
    assert details.logits.shape == (model.num_samples, 5, 10)
    assert model.num_samples == (12 if model.stochastic else 1)
    model.train()
    assert model.num_samples == 1
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(5, 3, 28, 28))


def test_stochastic_predictor_is_log_of_averaged_softmax():
    torch.manual_seed(0)
    model = create_model("mlp_vib").eval()
    x = torch.rand(3, 784)
    eps = torch.randn(12, 3, 256)
    with torch.no_grad():
        got = model.forward_details(x, eps=eps).prediction()
        h = model.encoder_head(model.backbone(x.reshape(3, 1, 28, 28)))
        mu, s = h[:, :256], h[:, 256:]
        std = torch.nn.functional.softplus(s - 5)
        probs = torch.stack([torch.softmax(model.decoder(mu + eps[i] * std), -1) for i in range(12)]).mean(0)
    torch.testing.assert_close(got, probs.log(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, log_mean_softmax(model.decoder(mu + eps * std)))
    assert model.stochastic and not create_model("mlp_dropout").stochastic


def test_mean_mode_is_deterministic_and_sampling_is_not():
    torch.manual_seed(0)
    model = create_model("mlp_vib").eval()
    # make the posterior wide so that samples visibly differ
    with torch.no_grad():
        model.encoder_head.bias[256:] += 8.0
    x = torch.rand(4, 784)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.mean_mode = True
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    mu = model.forward_details(x).mu
    torch.testing.assert_close(a, torch.log_softmax(model.decoder(mu), -1))


def test_the_mean_path_forward_is_forward_details_prediction_bit_for_bit_with_its_input_gradient():
    """model(x) in mean mode skips the std and the KL; what it returns, and the gradient an attack takes, are unchanged."""
    torch.manual_seed(1)
    model = create_model("mlp_vib").eval()
    model.mean_mode = True
    x1 = torch.rand(6, 1, 28, 28, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    fast, full = model(x1), model.forward_details(x2).prediction()
    assert torch.equal(fast, full)
    weights = torch.rand(6, 10)
    (g1,), (g2,) = torch.autograd.grad((fast * weights).sum(), x1), torch.autograd.grad((full * weights).sum(), x2)
    assert torch.equal(g1, g2)


def test_public_api():
    """vibbench re-exports exactly these names, each the very object its module defines; nothing else."""
    import vibbench.core.errors
    import vibbench.models.backbones
    import vibbench.models.classifier
    import vibbench.models.head
    import vibbench.models.methods
    import vibbench.models.registry
    import vibbench.runs.evaluate
    import vibbench.runs.trained

    defined_in = {
        "Classifier": vibbench.models.classifier,
        "ForwardDetails": vibbench.models.classifier,
        "Method": vibbench.models.methods,
        "VibbenchError": vibbench.core.errors,
        "create_model": vibbench.models.registry,
        "evaluate": vibbench.runs.evaluate,
        "kl_divergence": vibbench.models.head,
        "list_models": vibbench.models.registry,
        "load_model": vibbench.runs.trained,
        "register_backbone": vibbench.models.backbones,
        "register_method": vibbench.models.methods,
        "reparameterize": vibbench.models.head,
    }
    assert sorted(vibbench.__all__) == sorted(defined_in)
    for name, module in defined_in.items():
        assert getattr(vibbench, name) is getattr(module, name), name
    assert VibbenchError is vibbench.core.errors.VibbenchError and create_model is vibbench.models.registry.create_model
    with pytest.raises(AttributeError, match="no_such_name"):
        vibbench.no_such_name
    assert not hasattr(vibbench, "fused_vib_head")


def test_shared_noise_logits_equal_the_samples_with_their_input_gradient():
    """The product form of a linear decoder under noise shared by the images equals forming z = mu + eps * std with
    eps expanded over the batch: every sample's logits and the input gradient of a function of them; a decoder that
    is not an nn.Linear gets the samples; other noise shapes are refused."""
    import copy

    from torch import nn

    torch.manual_seed(0)
    model = create_model("mlp_vib").eval()
    x = torch.rand(6, 784)
    eps = torch.randn(9, 1, model.latent_dim)
    weights = torch.randn(9, 6, 10)
    grads = []
    for m in (model, None):
        xa = x.clone().requires_grad_(True)
        if m is None:
            logits = model.forward_details(xa, num_samples=9, eps=eps.expand(-1, 6, -1)).logits
        else:
            logits = m.shared_noise_logits(xa, eps)
        (logits * weights).sum().backward()
        grads.append((logits.detach(), xa.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
    wrapped = copy.deepcopy(model)
    wrapped.decoder = nn.Sequential(wrapped.decoder)
    torch.testing.assert_close(wrapped.shared_noise_logits(x, eps), grads[1][0], rtol=1e-5, atol=1e-5)
    model.mean_mode = True  # z = mu: every sample the same
    torch.testing.assert_close(model.shared_noise_logits(x, eps), model.decoder(model.forward_details(x).mu)[None].expand(9, -1, -1))
    model.mean_mode = False
    with pytest.raises(VibbenchError, match=r"shared noise must have shape \(n, 1, 256\)"):
        model.shared_noise_logits(x, torch.randn(9, 6, model.latent_dim))
