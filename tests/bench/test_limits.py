"""The limits of a training step: the products replayed are the ones the real step computes (counted by torch's
FlopCounterMode on a real forward and backward), and the update variant runs the trainer's optimizer and EMA."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vibbench.bench.limits import Product, StepProducts, step_products
from vibbench.models.registry import create_model
from vibbench.training.losses import training_loss


def real_step_flops(model, x, y, samples):
    """The matrix-product FLOPs torch counts in one real training step (forward, loss, backward)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model.forward_details(x, num_samples=samples)
        training_loss(out, y, beta=model.method.beta).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name, samples", [("mlp_vib", 1), ("mlp_vib", 3), ("mlp_deterministic", 1), ("mlp_dropout", 1)])
def test_the_replayed_products_are_the_real_steps(name, samples):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = torch.rand(16, 784), torch.randint(0, 10, (16,))
    products = step_products(model, x, samples)
    assert not products[0].input_grad and all(p.input_grad for p in products[1:])  # the data needs no gradient
    replay = StepProducts(products, "cpu")
    with FlopCounterMode(display=False) as counter:
        replay.step()
    assert replay.flops == counter.get_total_flops() == real_step_flops(model, x, y, samples)
    if samples > 1:  # the decoder sees every sample's rows
        assert products[-1].rows == 16 * samples


def test_the_update_variant_steps_adam_and_the_ema_on_the_models_shapes():
    model = create_model("mlp_vib")
    shapes = [p.shape for p in model.parameters()]
    replay = StepProducts(step_products(model, torch.rand(8, 784)), "cpu", update=shapes)
    before = [p.detach().clone() for p in replay.params]
    ema_before = [e.clone() for e in replay.ema]
    replay.step()
    assert [p.shape for p in replay.params] == shapes
    assert all(not torch.equal(a, b) for a, b in zip(before, replay.params))  # Adam moved every tensor
    assert all(not torch.equal(a, b) for a, b in zip(ema_before, replay.ema))  # and the EMA followed
    assert replay.optimizer.state[replay.params[0]]["step"] == 1


def test_flops_of_a_product():
    assert Product(10, 3, 4, input_grad=False).flops == 2 * 10 * 3 * 4 * 2
    assert Product(10, 3, 4, input_grad=True).flops == 2 * 10 * 3 * 4 * 3
