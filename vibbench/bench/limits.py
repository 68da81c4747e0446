"""The fastest a training step could run here: its matrix products alone, and those plus the weight update.

A training step of an MLP is its matrix products (per linear layer a forward product, the weight gradient's
product and, unless the layer's input is the data, the input gradient's product) plus everything else: the
elementwise ops, the loss, the noise, indexing, Python, and the update (fused Adam, the EMA), which reads and
writes every parameter several times and is bound by memory bandwidth, not by arithmetic. `StepProducts` records
the products of one real training forward pass of a model (the shapes its `nn.Linear` layers see) and replays
exactly those products, on random fp32 tensors of the same shapes on the same device, under the same autocast;
with `update`, it also runs the trainer's own fused Adam step and EMA over parameters of the model's shapes.
So `vibbench bench --compare` can put our trainer beside the two limits on the same machine, in the same process:
its share of the products-only rate is its share of the machine's matrix-product rate at the step's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vibbench.training.config import TrainConfig
from vibbench.training.loop import ema_update, make_optimizer
from vibbench.core.precision import autocast


@dataclass(frozen=True)
class Product:
    """One linear layer of a step: `rows` input rows of `inputs` features to `outputs`; `input_grad`: whether the
    backward pass computes the gradient of the layer's input (not for a layer reading the data)."""

    rows: int
    inputs: int
    outputs: int
    input_grad: bool

    @property
    def flops(self) -> float:
        """2 per multiply-add: forward, weight gradient and (if computed) input gradient."""
        return 2.0 * self.rows * self.inputs * self.outputs * (3 if self.input_grad else 2)


def step_products(model: nn.Module, images: torch.Tensor, train_samples: int = 1) -> list[Product]:
    """The products of one training step of `model` on `images` (a batch): its linear layers as one training
    forward pass (train mode, `train_samples` draws of z) calls them."""
    found: list[Product] = []

    def record(layer: nn.Linear, args, _output) -> None:
        x = args[0]
        found.append(Product(x.numel() // x.shape[-1], layer.in_features, layer.out_features, x.requires_grad))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.train()
        forward = getattr(model, "forward_details", None)
        with torch.enable_grad():
            if forward is not None:
                forward(images, num_samples=train_samples)
            else:
                model(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: nothing to replay")
    return found


class StepProducts:
    """Replays the products of a step (and, with `update`, the trainer's Adam step and EMA) on random tensors."""

    def __init__(
        self,
        products: list[Product],
        device: torch.device | str,
        precision: str = "fp32",
        update: list[torch.Size] | None = None,
        cfg: TrainConfig | None = None,
    ):
        """`update`: the shapes of the model's parameters, to run the trainer's update (`cfg`'s Adam and EMA) on."""
        self.products = products
        self.device = torch.device(device)
        self.precision = precision
        gen = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(self.device)

        self.tensors = [(rand(p.rows, p.inputs), rand(p.outputs, p.inputs) * 0.03, rand(p.outputs), rand(p.rows, p.outputs), p.input_grad) for p in products]
        self.params: list[torch.Tensor] = []
        if update:
            cfg = cfg or TrainConfig()
            self.params = [nn.Parameter(rand(*shape) * 0.03) for shape in update]
            for p in self.params:
                p.grad = torch.randn(p.shape, generator=gen).to(self.device) * 1e-3
            self.optimizer = make_optimizer(self.params, cfg)
            self.ema = [p.detach().clone() for p in self.params]
            self.ema_decay = cfg.ema_decay
        self.steps_done = 0

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.products)

    def step(self) -> None:
        with torch.no_grad(), autocast(self.device, self.precision):
            for x, w, b, g, input_grad in self.tensors:
                torch.addmm(b, x, w.t())  # forward
                torch.mm(g.t(), x)  # weight gradient
                if input_grad:
                    torch.mm(g, w)  # input gradient
        if self.params:
            self.optimizer.step()
            ema_update(self.ema, self.params, self.steps_done, self.ema_decay)
        self.steps_done += 1
