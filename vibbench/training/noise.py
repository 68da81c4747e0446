"""Training noise (samples of z, dropout masks) from one generator per model.

Each model of a run draws its training noise from its own generator, seeded by its seed and
its identity, so the noise a model sees does not depend on which other models train beside it:
trained alone or as a member of a population it gets the same samples of z and the same
dropout masks, and the two paths differ only in floating-point summation order.
"""

from __future__ import annotations

import hashlib

import torch

from vibbench.models.layers import Dropout
from vibbench.models.classifier import Classifier


def noise_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"vibbench-noise|{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ModelNoise:
    """Draws one training step's noise for one model: eps (n, B, K) if it samples, dropout uniforms per layer."""

    def __init__(self, model: Classifier, seed: int, key: str, device: torch.device | str):
        self.generator = torch.Generator(device=device).manual_seed(noise_seed(seed, key))
        self.device = device
        self.samples = model.stochastic
        self.latent_dim = model.latent_dim
        self.dropout_features = [layer.features for layer in model.modules() if isinstance(layer, Dropout) and layer.max_rate > 0]

    def draw(self, batch: int, num_samples: int) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        eps = None
        if self.samples:
            eps = torch.randn((num_samples, batch, self.latent_dim), generator=self.generator, device=self.device)
        masks = [torch.rand((batch, f), generator=self.generator, device=self.device) for f in self.dropout_features]
        return eps, masks

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def set_dropout_noise(model: torch.nn.Module, masks: list[torch.Tensor]) -> None:
    """Hand each active dropout layer its uniforms for the next forward pass (an empty list clears them)."""
    layers = [layer for layer in model.modules() if isinstance(layer, Dropout) and layer.max_rate > 0]
    for i, layer in enumerate(layers):
        layer.noise = masks[i] if masks else torch.empty(0, device=layer.p.device)
