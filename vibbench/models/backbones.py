"""Feature extractors shared by every method: the paper's MLP and a small convolutional net.

A backbone maps images in [0, 1] of shape (B, 1, 28, 28) to features (B, F); the classifier
adds the encoder's last layer (F -> K or 2K) and the decoder (K -> classes). Rescaling to
[-1, 1], as in the authors' demo, happens here, inside the model, so attacks work in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

BACKBONES: dict[str, Callable[..., "Backbone"]] = {}


def register_backbone(fn):
    """Register a backbone factory under its function name."""
    BACKBONES[fn.__name__] = fn
    return fn


class Dropout(nn.Module):
    """Inverted dropout whose rate is a buffer (a tensor), so a population can give each member its own rate.

    Same semantics as nn.Dropout: active in train(), identity in eval(). `max_rate` is a plain
    float, the largest rate in use (the population trainer sets it to the members' maximum): when
    it is 0 the layer is skipped without drawing random numbers, and without reading the buffer,
    which would be data-dependent control flow under vmap. The trainers supply the uniform noise
    through the `noise` buffer (shape (B, features)) from a per-model generator, so that a model
    draws the same masks alone or in a population; without it the layer draws from torch's RNG.
    """

    def __init__(self, p: float, features: int):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.register_buffer("noise", torch.empty(0), persistent=False)
        self.max_rate = float(p)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_rate == 0.0:
            return x
        keep = 1.0 - self.p
        u = self.noise if self.noise.numel() else torch.rand_like(x)
        return x * (u < keep) / keep


class Backbone(nn.Module):
    def __init__(self, body: nn.Sequential, feature_dim: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2.0 - 1.0)


@register_backbone
def mlp(dropout: float = 0.0, hidden: int = 1024, in_features: int = 784) -> Backbone:
    """The VIB paper's encoder body: 784 -> 1024 -> ReLU -> 1024 -> ReLU (Alemi et al. 2017, Sec. 4.1)."""
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        Dropout(dropout, hidden),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        Dropout(dropout, hidden),
    )
    return Backbone(body, hidden)


@register_backbone
def conv(dropout: float = 0.0, hidden: int = 1024) -> Backbone:
    """A small CNN: conv5x5(32)-pool-conv5x5(64)-pool-fc(1024), the classic TensorFlow MNIST tutorial net."""
    body = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
        Dropout(dropout, hidden),
    )
    return Backbone(body, hidden)
